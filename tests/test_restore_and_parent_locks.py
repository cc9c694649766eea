"""A restore refuses a rollback a later digest held back; the parents lock is taken by no create
and, by a re-parenting write, before any row lock, so it makes no deadlock (stop 37's review of its fixes)."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from models.entities import EntityType
from models.ledger_store import store_digest
from models.registry import update_entity
from models.repair import NotRestorable, repairs
from tests.test_assignment import World
from tests.test_audit import lift_guard
from tests.test_repair import _restore, _sql

E = EntityType


@pytest.fixture
def world(db_session, write_ctx, steward) -> World:
    return World(db_session, write_ctx, steward)


def test_a_rollback_is_still_refused_once_a_later_digest_held_it_back(world, db_session, write_ctx, keyring) -> None:
    """Finding 1. A digest holds the skill at version 2; its owner deletes version 2 past the
    guard and points the row at version 1 (its content left as version 2 had it). The next
    hourly digest holds the entity back at its trusted link with version 0 ("a link its chain
    lost", models.digest_check._held); _digest_head_lost skipped every leaf of version 0, so
    from then on the restore set the row back to version 1 and signed a repair record vouching
    for the rollback, as before the fix."""
    skill = world.skills[0]
    update_entity(db_session, entity_type=E.SKILL, entity_id=skill.id, changes={"description": "second text"}, ctx=write_ctx)
    store_digest(db_session, keyring=keyring)
    lift_guard(db_session, "DELETE FROM entity_versions WHERE entity_id = :id AND version = 2", id=skill.id)
    _sql(db_session, "UPDATE skills SET version = 1, head_link_hash = (SELECT link_hash FROM entity_versions "
                     "WHERE entity_id = :s AND version = 1) WHERE id = :s", s=skill.id)
    store_digest(db_session, keyring=keyring)  # beat's next digest
    held = db_session.execute(text("SELECT version FROM ledger_digest_heads WHERE entity_id = :s "
                                   "ORDER BY digest_id DESC LIMIT 1"), {"s": skill.id}).scalar_one()
    assert held == 0  # held back at the lost link
    with pytest.raises(NotRestorable, match="no longer has"):
        _restore(db_session, write_ctx, E.SKILL, skill.id)
    assert repairs(db_session, entity_id=skill.id) == []


def test_creating_an_entity_under_a_parent_waits_for_no_re_parenting_in_flight(engine, write_ctx, committed_steward) -> None:
    """Finding 2. A new entity is no one's ancestor (nothing can name it as parent before it
    commits), so creating one under a parent cannot close a loop; yet apply_fields took the
    per-type parents lock for it, held to commit through the embedding, the signing, the
    rules and the flush. Every create naming a parent queued behind any re-parenting of its
    type in flight, and behind each other."""
    from sqlalchemy.exc import OperationalError

    from models.db import make_session_factory, transaction
    from models.registry import create_entity

    sessions = make_session_factory(engine)
    with transaction(sessions) as session:
        a, b = (create_entity(session, entity_type=E.INDUSTRY, ctx=write_ctx, data={
            "name": f"Parent {code}", "code": code, "governance_agent_id": committed_steward}).id for code in ("PRA", "PRB"))
    first = sessions()
    try:
        update_entity(first, entity_type=E.INDUSTRY, entity_id=a, changes={"parent_id": b}, ctx=write_ctx)  # in flight
        with transaction(sessions) as session:
            session.execute(text("SET LOCAL lock_timeout = '2s'"))
            try:
                create_entity(session, entity_type=E.INDUSTRY, ctx=write_ctx, data={
                    "name": "Child", "code": "CHD", "governance_agent_id": committed_steward, "parent_id": b})
            except OperationalError as exc:
                pytest.fail(f"a create under a parent waited for an unrelated re-parenting: {exc.orig}")
    finally:
        first.rollback()
        first.close()


def test_re_parenting_teams_while_a_role_changes_its_skills_does_not_deadlock(engine, write_ctx, committed_steward, monkeypatch) -> None:
    """Finding 3. The parents lock, held to commit, adds a wait the seat guards' lock order
    never had. H re-parents team T1 and gives it role R (parents lock, then R FOR SHARE); W
    re-parents team T2, of role R (T2's row, then the parents lock: waits for H); G changes R's
    required skills (R's row, then R's teams, T2 among them: waits for W). H then waits for G:
    a cycle PostgreSQL breaks after deadlock_timeout by failing one write, answered as 503
    "the database is unreachable". Without the parents lock W did not wait, and all three
    committed in turn."""
    import threading

    from sqlalchemy.exc import OperationalError

    from models import seat_guards
    from models.db import make_session_factory, transaction
    from tests.conftest import lock_waiters, wait_for

    sessions = make_session_factory(engine)
    with transaction(sessions) as session:
        world = World(session, write_ctx, committed_steward)
        role, skills = world.role.id, [s.id for s in world.skills]
        t1, tp = world.team("T1", role=world.other_role).id, world.team("TP", role=world.other_role).id
        t2, tq = world.team("T2").id, world.team("TQ").id
    h_ready, go, errors = threading.Event(), threading.Event(), []
    original = seat_guards._hold_role_for_team

    def hold_role_after_a_pause(session, job_role_id):
        h_ready.set()
        go.wait(30)
        original(session, job_role_id)

    monkeypatch.setattr(seat_guards, "_hold_role_for_team", hold_role_after_a_pause)

    def write(entity_type, entity_id, changes):
        def run() -> None:
            try:
                with transaction(sessions) as session:
                    update_entity(session, entity_type=entity_type, entity_id=entity_id, changes=changes, ctx=write_ctx)
            except OperationalError as exc:
                errors.append(exc.orig)
        thread = threading.Thread(target=run)
        thread.start()
        return thread

    h = write(E.TEAM, t1, {"parent_id": tp, "job_role_id": role})
    assert h_ready.wait(30)
    w = write(E.TEAM, t2, {"parent_id": tq})
    wait_for(lambda: lock_waiters(engine) >= 1, what="W to wait for the parents lock")
    g = write(E.JOB_ROLE, role, {"required_skill_ids": skills[:1]})
    wait_for(lambda: not g.is_alive() or lock_waiters(engine) >= 2, what="G to finish or wait for T2")
    go.set()
    for thread in (h, w, g):
        thread.join(60)
    assert errors == [], f"a write failed: {errors}"
