"""Review of stored ledger digests: a stored digest's ``as_of`` names exactly the heads it holds.

A stored digest's leaves are the heads of the versions stamped at or before its ``as_of``
(as ``GET /ledger/digest``'s are: :func:`models.ledger.versions_held`), whatever version
write commits around it; checked by handing its signed document back root-only, which
recomputes the heads as of that time (:func:`models.ledger_compare.root_as_of`). Each race uses two
real sessions on the real database; the interleaving is forced by the versions lock a
version write holds, or by a write committed between two of the digest's statements (a
wrapped step), never by a sleep. Also: :func:`models.ledger_digest.digest_problem`
answers, never raises, for any key set.
"""

import threading
import uuid
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

import models.ledger as ledger
import models.ledger_store as ledger_store
from models.audit_runs import digest_findings
from models.audit_tables import LedgerDigest, LedgerDigestHead
from models.chain import EntityVersion
from models.entities import EntityType
from models.errors import LedgerBusy
from models.ledger_digest import digest_problem
from models.ledger_store import store_digest
from models.registry import create_entity, update_entity
from tests.conftest import wait_for

E = EntityType


def _committed_skill(engine, write_ctx, steward) -> uuid.UUID:
    with Session(engine) as session, session.begin():
        return create_entity(session, entity_type=E.SKILL, ctx=write_ctx, data={
            "name": "Digested Skill", "skill_key": "digested-skill", "category": "technical",
            "description": "version one", "governance_agent_id": steward}).id


def _write(engine, write_ctx, skill_id, description: str) -> None:
    with Session(engine) as writer, writer.begin():
        update_entity(writer, entity_type=E.SKILL, entity_id=skill_id, changes={"description": description}, ctx=write_ctx)


def _exact(engine, keyring, digest_id: int) -> tuple[list, list]:
    """(the root-only findings of the stored digest's signed document, the leaves whose
    version is stamped after the digest's ``as_of``): both empty for an exact digest."""
    with Session(engine) as auditor, auditor.begin():
        digest = auditor.get(LedgerDigest, digest_id)
        assert digest is not None and digest.signature
        late = auditor.execute(select(LedgerDigestHead.entity_id, LedgerDigestHead.version).join(
            EntityVersion, (EntityVersion.entity_id == LedgerDigestHead.entity_id)
            & (EntityVersion.version == LedgerDigestHead.version)).where(
            LedgerDigestHead.digest_id == digest_id, EntityVersion.created_at > digest.as_of)).all()
        return digest_findings(auditor, dict(digest.document), keyring), late


def _stored(engine, keyring) -> int:
    with Session(engine) as session, session.begin():
        return store_digest(session, keyring=keyring).id


def test_a_write_committed_after_a_stored_digest_s_stamp_and_before_its_leaves_is_not_in_it(
        engine, write_ctx, keyring, committed_steward, monkeypatch) -> None:
    """The digest's transaction has begun (its ``as_of`` read) when a second session commits
    version 2; the leaves are read after that. Stamped after ``as_of``, version 2 must not be
    a leaf (it was: ``as_of`` was the transaction's start, ``now()``)."""
    skill_id = _committed_skill(engine, write_ctx, committed_steward)
    real_insert = ledger_store._insert_heads

    def commit_then_read(session, digest_id):
        _write(engine, write_ctx, skill_id, "committed between the stamp and the leaves")
        real_insert(session, digest_id)

    monkeypatch.setattr(ledger_store, "_insert_heads", commit_then_read)
    findings, late = _exact(engine, keyring, _stored(engine, keyring))
    assert late == [] and findings == []


def test_a_stored_digest_waits_for_a_version_stamped_before_it_and_committed_after(
        engine, write_ctx, keyring, committed_steward, monkeypatch) -> None:
    """A version write in flight (stamped, not committed) when a digest starts: the digest
    holds it, waiting for it to commit, rather than stamping itself after it and leaving it out."""
    skill_id = _committed_skill(engine, write_ctx, committed_steward)
    retried, real_wait = threading.Event(), ledger.wait_for_writes_in_flight
    monkeypatch.setattr(ledger, "wait_for_writes_in_flight", lambda: (retried.set(), real_wait()))
    outcome: dict[str, Any] = {}

    def take_digest() -> None:
        try:
            outcome["id"] = _stored(engine, keyring)
        except Exception as exc:  # noqa: BLE001 - the assertion below names it
            outcome["error"] = exc

    taking = threading.Thread(target=take_digest)
    with Session(engine) as writer, writer.begin():
        update_entity(writer, entity_type=E.SKILL, entity_id=skill_id, changes={"description": "in flight"}, ctx=write_ctx)
        writer.flush()  # version 2 stamped; its transaction holds the versions lock shared
        taking.start()
        wait_for(lambda: retried.is_set() or not taking.is_alive(), what="the digest to wait for the write, or end")
    taking.join(30)
    assert "error" not in outcome, outcome
    findings, late = _exact(engine, keyring, outcome["id"])
    assert late == [] and findings == []
    with Session(engine) as session:
        versions = session.scalars(select(LedgerDigestHead.version).where(
            LedgerDigestHead.digest_id == outcome["id"], LedgerDigestHead.entity_id == skill_id)).all()
    assert versions == [2]


def test_a_stored_digest_that_finds_no_quiet_moment_is_ledger_busy_and_stores_nothing(
        engine, keyring, committed_steward, monkeypatch) -> None:
    monkeypatch.setattr(ledger, "DIGEST_WAIT_SECONDS", 0.05)
    with engine.connect() as writer:  # a version write in flight throughout
        writer.execute(text("SELECT pg_advisory_xact_lock_shared(:key)"), {"key": ledger.VERSIONS_LOCK})
        with pytest.raises(LedgerBusy):
            _stored(engine, keyring)
        writer.rollback()
    with Session(engine) as session:
        assert session.scalar(select(LedgerDigest.id)) is None
    findings, late = _exact(engine, keyring, _stored(engine, keyring))
    assert late == [] and findings == []


def _trying_holders(engine) -> set:
    """The transactions (by start) of connections trying the versions lock alone: one per digest attempt."""
    with engine.connect() as connection:
        return set(connection.scalars(text(
            "SELECT xact_start FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            " AND state IN ('active', 'idle in transaction') AND query LIKE 'SELECT pg_try_advisory_xact_lock%'")))


def test_beat_s_digest_task_tries_again_later_when_the_ledger_stays_busy(worker, settings, engine, committed_steward) -> None:
    """The real worker's first attempt finds a version write in flight for all its wait and
    gives up (``LedgerBusy``); the task is retried, and stores its digest once the write ends."""
    from tasks.celery_app import create_celery

    with engine.connect() as writer:
        writer.execute(text("SELECT pg_advisory_xact_lock_shared(:key)"), {"key": ledger.VERSIONS_LOCK})
        create_celery(settings).send_task("plant.ledger.store_digest")
        first = wait_for(lambda: _trying_holders(engine), what="the digest's first attempt waiting for a quiet moment")
        wait_for(lambda: _trying_holders(engine) - first, timeout=60, what="a second attempt")
        with Session(engine) as session:
            assert session.scalar(select(LedgerDigest.id)) is None
        writer.rollback()
    with Session(engine) as session:
        wait_for(lambda: session.scalar(select(func.count()).select_from(LedgerDigest)) == 1, what="the retried digest")


def test_digest_problem_answers_for_a_key_set_whose_keys_is_not_a_list(keyring) -> None:
    document = {"type": "plant.ledger-digest.v1", "as_of": "2026-01-01T00:00:00Z", "entity_count": 0,
                "heads_root": "00" * 32, "kid": keyring.active.kid, "signature": "AA"}
    for keys in ({"keys": {"kid": keyring.active.kid}}, {"keys": "not a list"}, {"keys": None}, {"keys": 5}, "a string", 5):
        assert digest_problem(document, keys).startswith("its keys cannot be looked up")
    assert digest_problem(document, {"keys": []}) == f"no trusted key has kid {keyring.active.kid!r}"
