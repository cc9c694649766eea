"""Which stored digest the incremental audit trusts when newer rows are not Plant's.

Anyone with SQL INSERT on ``ledger_digests`` (no signing key) could add a row dated now after
every digest beat stores: the incremental audit took it as the latest, said ``digest-invalid``
and examined nothing, for as long as they kept doing it. It now trusts the newest digest Plant
signed whose rows verify, examines what changed since that one, and still reports each newer
row; the rows it looks through are bounded (:data:`models.ledger_store.LATEST_DIGESTS_READ`).
"""

import pytest
from sqlalchemy import text

import models.ledger_store
from models.ledger_store import LATEST_DIGESTS_READ, store_digest
from tests.test_audit import run_incremental

FORGERIES = {
    "unsigned": "INSERT INTO ledger_digests (as_of, entity_count, heads_root, kid, signature, document) "
                "SELECT now(), 0, '\\x00', '', '', '{}' FROM generate_series(1, :n) RETURNING id",
    # The genuine signed document, re-dated to be the latest: its signature no longer verifies.
    "re-dated": "INSERT INTO ledger_digests (as_of, entity_count, heads_root, kid, signature, document) "
                "SELECT now(), entity_count, heads_root, kid, signature, "
                "jsonb_set(document, '{as_of}', to_jsonb(to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'))) "
                "FROM ledger_digests, generate_series(1, :n) WHERE id = :d RETURNING id",
}


def _forge(session, kind: str, digest_id: int, n: int = 1) -> list[int]:
    forged = list(session.scalars(text(FORGERIES[kind]), {"n": n, "d": digest_id}))
    session.expire_all()
    return forged


def _tamper_after(session, skill) -> None:
    """A change since the digest an incremental audit must see (a head set to NULL)."""
    session.execute(text("UPDATE skills SET head_link_hash = NULL WHERE id = :id"), {"id": skill.id})
    session.expire_all()


@pytest.mark.parametrize("kind", sorted(FORGERIES))
def test_a_forged_digest_row_dated_now_does_not_stop_the_incremental_audit(db_session, skill, keyring, kind) -> None:
    digest = store_digest(db_session, keyring=keyring)
    _tamper_after(db_session, skill)
    [forged] = _forge(db_session, kind, digest.id)
    summary, findings = run_incremental(db_session, keyring)
    coverage = summary["coverage"]
    assert coverage["since_digest"] == digest.id and coverage["digests_passed_over"] == 1, coverage
    assert coverage["digest"].endswith("verified") and summary["signatures"] == "all-after-digest"
    assert "head-mismatch" in {f.code for f in findings if f.entity_id == skill.id}
    [invalid] = [f for f in findings if f.code == "digest-invalid"]  # the tampering stays visible
    assert invalid.entity_id is None and f"stored ledger digest {forged} " in invalid.detail
    assert f"passed over for digest {digest.id}" in invalid.detail
    assert summary["run_level_findings"] == ["digest-invalid"]


def test_forged_rows_beyond_the_bound_make_it_examine_nothing_after_a_bounded_look(
        db_session, skill, keyring, monkeypatch) -> None:
    """Each row looked at costs a signature check: past LATEST_DIGESTS_READ rows none are read."""
    digest = store_digest(db_session, keyring=keyring)
    _tamper_after(db_session, skill)
    _forge(db_session, "unsigned", digest.id, n=LATEST_DIGESTS_READ * 4)
    checked = counting_signed_row_checks(monkeypatch)
    summary, findings = run_incremental(db_session, keyring)
    assert len(checked) == LATEST_DIGESTS_READ and digest.id not in checked
    assert summary["total_entities"] == 0 and "NOT trusted" in summary["coverage"]["digest"]
    assert [f.code for f in findings] == ["digest-invalid"] * (LATEST_DIGESTS_READ + 1)
    assert f"none of the {LATEST_DIGESTS_READ} newest" in findings[-1].detail


def test_forged_rows_within_the_bound_are_each_reported_and_passed_over(db_session, skill, keyring) -> None:
    digest = store_digest(db_session, keyring=keyring)
    _tamper_after(db_session, skill)
    forged = _forge(db_session, "unsigned", digest.id, n=LATEST_DIGESTS_READ - 1)
    summary, findings = run_incremental(db_session, keyring)
    assert summary["coverage"]["since_digest"] == digest.id
    invalid = [f.detail for f in findings if f.code == "digest-invalid"]
    assert len(invalid) == len(forged) == summary["coverage"]["digests_passed_over"]
    assert "head-mismatch" in {f.code for f in findings if f.entity_id == skill.id}


def test_the_newest_signed_digest_with_edited_leaves_is_not_passed_over_for_an_older_one(
        db_session, skill, keyring, write_ctx) -> None:
    """Plant's own newest digest damaged calls for a full audit: an older signed one is never
    the base (the changes it would miss are those only the newer one remembers)."""
    from models.entities import EntityType
    from models.registry import update_entity
    from tests.test_audit import lift_guard

    older = store_digest(db_session, keyring=keyring)
    # Another document (one of the same heads and moment would be the same signed document).
    update_entity(db_session, entity_type=EntityType.SKILL, entity_id=skill.id, changes={"description": "four"}, ctx=write_ctx)
    db_session.flush()
    newest = store_digest(db_session, keyring=keyring)
    with db_session.begin_nested():  # another xid: the leaf attestation no longer covers the rows
        lift_guard(db_session, "DELETE FROM ledger_digest_heads WHERE digest_id = :d AND entity_id = :e",
                   table="ledger_digest_heads", d=newest.id, e=skill.id)
    _forge(db_session, "unsigned", newest.id)
    summary, findings = run_incremental(db_session, keyring)
    assert older.id != newest.id and summary["total_entities"] == 0
    assert "NOT trusted" in summary["coverage"]["digest"] and summary["coverage"]["since_digest"] != older.id
    details = [f.detail for f in findings if f.code == "digest-invalid"]
    assert len(details) == 2 and any(f"stored ledger digest {newest.id} " in d and "do not hash" in d for d in details)


def test_pruning_still_keeps_the_newest_signed_digests_past_forged_rows(db_session, skill, keyring) -> None:
    """The pruning's search for the newest signed digests is the one the audit reads through."""
    from models.ledger_store import prune_digest_leaves

    kept = store_digest(db_session, keyring=keyring)
    _forge(db_session, "unsigned", kept.id, n=3)
    prune_digest_leaves(db_session, keyring=keyring, keep_latest=1)
    count = db_session.scalar(text("SELECT count(*) FROM ledger_digest_heads WHERE digest_id = :d"), {"d": kept.id})
    assert count == kept.entity_count > 0
    assert run_incremental(db_session, keyring)[0]["coverage"]["since_digest"] == kept.id


@pytest.mark.parametrize("deleted", [False, True], ids=["leaf", "tombstone"])
def test_a_row_s_version_column_off_its_moved_head_is_held_back(db_session, skill, keyring, write_ctx, deleted) -> None:
    """The version column alone, edited after a signed change (a deletion too): the next digest
    holds the head back, so every incremental audit after it still reports what a full one does."""
    import datetime as dt

    from models.entities import EntityType
    from models.registry import update_entity
    from tests.test_audit import run_audit

    store_digest(db_session, keyring=keyring)
    changes = {"deleted_at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC)} if deleted else {"description": "four"}
    update_entity(db_session, entity_type=EntityType.SKILL, entity_id=skill.id, changes=changes, ctx=write_ctx)
    db_session.flush()
    db_session.execute(text("UPDATE skills SET version = version - 1 WHERE id = :id"), {"id": skill.id})
    db_session.expire_all()
    held: list[str] = []
    store_digest(db_session, keyring=keyring, held_back=held)
    assert [str(skill.id) in h and "head-mismatch" in h for h in held] == [True]
    _, after = run_incremental(db_session, keyring)
    _, full = run_audit(db_session, keyring)
    assert "head-mismatch" in {f.code for f in after if f.entity_id == skill.id} & {f.code for f in full if f.entity_id == skill.id}


def counting_signed_row_checks(monkeypatch) -> list[int]:
    """The ids of the stored digest rows whose signature is checked from now on, in order."""
    checked: list[int] = []
    real = models.ledger_store.signed_row_problem

    def counted(session, stored, ring):
        checked.append(stored.id)
        return real(session, stored, ring)

    monkeypatch.setattr(models.ledger_store, "signed_row_problem", counted)
    return checked
