"""Restoring a frozen entity row from its signed head, against the real database."""

import json
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from models.chain import history
from models.chain_verification import verify_entity
from models.entities import Agent, EntityType, Team
from models.errors import EntityTampered, TeamFull
from models.ledger_store import store_digest
from models.registry import update_entity
from models.repair import REPAIRS_LOCK, EntityRepair, NotRestorable, repairs, restore_entity, verify_repair
from tests.conftest import EMBEDDER, ring_sealing
from tests.test_assignment import World
from tests.test_audit import lift_guard, reset_row_to

E = EntityType


@pytest.fixture
def world(db_session, write_ctx, steward) -> World:
    return World(db_session, write_ctx, steward)


def _restore(session, ctx, entity_type, entity_id):
    return restore_entity(session, entity_type=entity_type, entity_id=entity_id, keyring=ctx.keyring,
                          embedder=ctx.embedder, actor="operator:test")


def _sql(session, statement, **params) -> None:
    session.execute(text(statement), params)
    session.expire_all()


def test_an_edited_row_is_restored_and_the_repair_is_signed(world, db_session, write_ctx, keyring) -> None:
    team = world.team("Repaired team", capacity=2)
    agent = world.agent("Edited", description="the signed description")
    update_entity(db_session, entity_type=E.AGENT, entity_id=agent.id, changes={"team_id": team.id}, ctx=write_ctx)
    _sql(db_session, "UPDATE agents SET description = 'edited by hand', tags = '{\"x\"}' WHERE id = :a", a=agent.id)
    _sql(db_session, "DELETE FROM agent_skills WHERE agent_id = :a AND skill_id = :s", a=agent.id, s=world.skills[0].id)
    with pytest.raises(EntityTampered):
        update_entity(db_session, entity_type=E.AGENT, entity_id=agent.id, changes={"description": "x"}, ctx=write_ctx)

    outcome = _restore(db_session, write_ctx, E.AGENT, agent.id)
    assert outcome.restored and outcome.finding == "row-content-mismatch" and outcome.version == 2
    assert outcome.changed_fields == ("description", "skill_ids", "tags")
    restored = db_session.get(Agent, agent.id)
    assert restored.description == "the signed description" and restored.tags == []
    assert {s.id for s in restored.skills} == {s.id for s in world.skills[:2]} and restored.team_id == team.id
    assert verify_entity(db_session, entity=restored, keyring=keyring).ok
    assert [v.version for v in history(db_session, entity_id=agent.id)] == [1, 2]  # no version was added

    [record] = repairs(db_session, entity_id=agent.id)
    exported = record.as_json()
    assert verify_repair(exported, keyring) and record.actor == "operator:test"
    assert verify_repair(exported, ring_sealing(keyring, "2999-01-01T00:00:00Z"))
    assert not verify_repair(exported, ring_sealing(keyring, exported["repaired_at"]))  # signed at or after the seal
    assert record.row_before["content"]["description"] == "edited by hand"
    assert exported["format"] == "plant.entity-repair.v1"
    for forged in ({**exported, "row_before": {**exported["row_before"], "content": {}}}, {**exported, "actor": "someone"},
                   {**exported, "extra": 1}, {**exported, "signature": exported["signature"] + "="}):
        assert not verify_repair(forged, keyring)  # a record that says otherwise does not verify
    # Writes work again and sign on top of the signed head.
    update_entity(db_session, entity_type=E.AGENT, entity_id=agent.id, changes={"description": "after repair"}, ctx=write_ctx)
    assert verify_entity(db_session, entity=db_session.get(Agent, agent.id), keyring=keyring).ok


def test_a_row_reset_to_an_older_version_goes_forward_to_the_newest(world, db_session, write_ctx, keyring) -> None:
    skill = world.skills[0]
    update_entity(db_session, entity_type=E.SKILL, entity_id=skill.id, changes={"description": "second text"}, ctx=write_ctx)
    reset_row_to(db_session, skill, 1)
    outcome = _restore(db_session, write_ctx, E.SKILL, skill.id)
    assert (outcome.finding, outcome.version) == ("stale-head", 2)
    assert verify_entity(db_session, entity=db_session.get(type(skill), skill.id), keyring=keyring).ok


def test_a_chain_whose_newest_versions_were_deleted_is_not_restored_to_what_is_left(world, db_session, write_ctx, keyring) -> None:
    """A stored digest holds the skill at version 2; its owner deletes version 2 past the guard.
    What is left verifies, and the restore set the row back to version 1 and signed a repair
    record saying so: a signed record vouching for a rollback (review-cli finding 2). The
    digest names a version the chain no longer has: refused, nothing changed."""
    skill = world.skills[0]
    update_entity(db_session, entity_type=E.SKILL, entity_id=skill.id, changes={"description": "second text"}, ctx=write_ctx)
    store_digest(db_session, keyring=keyring)
    lift_guard(db_session, "DELETE FROM entity_versions WHERE entity_id = :id AND version = 2", id=skill.id)
    db_session.expire_all()
    with pytest.raises(NotRestorable, match="holds its version 2, which its chain no longer has"):
        _restore(db_session, write_ctx, E.SKILL, skill.id)
    assert repairs(db_session, entity_id=skill.id) == [] and db_session.get(type(skill), skill.id).version == 2


def test_a_row_edited_after_a_digest_is_restored_as_without_one(world, db_session, write_ctx, keyring) -> None:
    skill = world.skills[0]
    store_digest(db_session, keyring=keyring)
    _sql(db_session, "UPDATE skills SET description = 'edited by hand' WHERE id = :s", s=skill.id)
    outcome = _restore(db_session, write_ctx, E.SKILL, skill.id)
    assert outcome.restored and outcome.finding == "row-content-mismatch"


def test_typed_content_is_the_inverse_of_governed_content_for_every_field(world, db_session) -> None:
    """Restore sets fields from the signed content through typed_content: every governed
    field, of every type, must come back as its column holds it."""
    from models.entities import SKILL_ID_FIELDS, governed_content, typed_content

    team, parent, agent = world.team("Typed Team"), world.agent("Typed parent"), world.agent("Typed")
    db_session.execute(text("UPDATE agents SET team_id = :t, deleted_at = now(), parent_id = :p WHERE id = :a"),
                       {"t": team.id, "p": parent.id, "a": agent.id})
    db_session.expire_all()
    for entity in (agent, team, world.role, world.skills[0], world.industry):
        typed = typed_content(entity.entity_type_value, governed_content(entity))
        for name, value in typed.items():
            held = getattr(entity, name) if name not in SKILL_ID_FIELDS else sorted(s.id for s in getattr(entity, SKILL_ID_FIELDS[name]))
            assert (sorted(value) if name in SKILL_ID_FIELDS else value) == held, (entity.entity_type_value, name)


def test_an_intact_row_is_left_alone(world, db_session, write_ctx) -> None:
    outcome = _restore(db_session, write_ctx, E.INDUSTRY, world.industry.id)
    assert not outcome.restored and outcome.repair is None
    assert repairs(db_session) == []


def test_a_broken_chain_is_never_repaired(world, db_session, write_ctx) -> None:
    skill = world.skills[1]
    update_entity(db_session, entity_type=E.SKILL, entity_id=skill.id, changes={"description": "second text"}, ctx=write_ctx)
    lift_guard(db_session, "UPDATE entity_versions SET content = :c WHERE entity_id = :e AND version = 1",
               c=json.dumps({"forged": True}).encode(), e=skill.id)
    _sql(db_session, "UPDATE skills SET description = 'edited by hand' WHERE id = :s", s=skill.id)
    with pytest.raises(NotRestorable) as refused:
        _restore(db_session, write_ctx, E.SKILL, skill.id)
    assert refused.value.extensions["findings"][0] == {"code": "content-hash-mismatch", "version": 1}
    assert db_session.get(type(skill), skill.id).description == "edited by hand"  # the evidence stays
    assert repairs(db_session) == []


def test_a_restore_that_would_overfill_a_team_is_refused(world, db_session, write_ctx) -> None:
    team = world.team("One seat", capacity=1)
    seated, taker = world.agent("Seated"), world.agent("Taker")
    update_entity(db_session, entity_type=E.AGENT, entity_id=seated.id, changes={"team_id": team.id}, ctx=write_ctx)
    _sql(db_session, "UPDATE agents SET team_id = NULL WHERE id = :a", a=seated.id)  # moved out through SQL
    update_entity(db_session, entity_type=E.AGENT, entity_id=taker.id, changes={"team_id": team.id}, ctx=write_ctx)
    with pytest.raises(TeamFull), db_session.begin_nested():  # the caller's transaction rolls back
        _restore(db_session, write_ctx, E.AGENT, seated.id)
    assert db_session.get(Team, team.id).capacity == 1
    assert [a.id for a in db_session.query(Agent).filter(Agent.team_id == team.id)] == [taker.id]


def test_a_restore_puts_back_a_governor_retired_since_it_was_named(world, db_session, write_ctx, steward) -> None:
    governor = world.agent("Governor")
    governed = world.make(E.INDUSTRY, name="Governed Industry", code="GVD", governance_agent_id=governor.id)
    update_entity(db_session, entity_type=E.AGENT, entity_id=governor.id, changes={"status": "retired"}, ctx=write_ctx)
    _sql(db_session, "UPDATE industries SET governance_agent_id = :s WHERE id = :i", s=steward, i=governed.id)
    outcome = _restore(db_session, write_ctx, E.INDUSTRY, governed.id)
    assert outcome.restored and outcome.changed_fields == ("governance_agent_id",)


def test_repair_records_are_append_only(world, db_session, write_ctx) -> None:
    agent = world.agent("Guarded record")
    _sql(db_session, "UPDATE agents SET name = 'renamed by hand' WHERE id = :a", a=agent.id)
    record_id = _restore(db_session, write_ctx, E.AGENT, agent.id).repair.id
    for statement in ("UPDATE entity_repairs SET actor = 'someone else' WHERE id = :r",
                      "DELETE FROM entity_repairs WHERE id = :r"):
        with pytest.raises(DBAPIError, match="append-only"), db_session.begin_nested():
            db_session.execute(text(statement), {"r": record_id})
    assert db_session.get(EntityRepair, record_id).actor == "operator:test"


def test_an_unknown_entity_is_404(db_session, write_ctx) -> None:
    from models.errors import NotFound

    with pytest.raises(NotFound):
        _restore(db_session, write_ctx, E.AGENT, uuid.uuid4())


def test_a_repair_is_in_the_signed_report_of_every_later_run_that_covers_it(engine, write_ctx, keyring, committed_steward) -> None:
    from models.audit_tables import AuditRun
    from models.db import make_session_factory, transaction
    from models.report_view import report_view
    from tests.report_builders import build_report
    from tests.test_audit import run_audit

    sessions = make_session_factory(engine)
    with transaction(sessions) as session:
        agent_id = World(session, write_ctx, committed_steward).agent("Reported").id

    def report_of(params):
        with transaction(sessions) as session:  # each run in a transaction of its own, as jobs run
            earlier = set(session.scalars(select(AuditRun.id)))
            run_audit(session, keyring, params)
            [run] = [r for r in session.scalars(select(AuditRun)) if r.id not in earlier]
            return run.id, build_report(session, keyring=keyring, run_id=run.id)

    before_id, before = report_of({"verify_signatures": "all"})
    with transaction(sessions) as session:
        _sql(session, "UPDATE agents SET name = 'renamed by hand' WHERE id = :a", a=agent_id)
        repair_id = str(_restore(session, write_ctx, E.AGENT, agent_id).repair.id)
    run_id, report = report_of({"verify_signatures": "all"})
    assert [r["id"] for r in report["repairs"]] == [repair_id]
    assert verify_repair(report["repairs"][0], keyring) and report["repairs"][0]["row_before"]["content"]["name"] == "renamed by hand"
    with sessions() as session:
        shown = report_view(session, run_id=run_id, keyring=keyring).repairs
        assert [(r["id"], r["verified"]) for r in shown] == [(repair_id, True)]
        assert build_report(session, keyring=keyring, run_id=before_id) == before  # a run that started before it never lists it
    assert before["repairs"] == []
    assert report_of({"scope": {"entity_type": "skill"}})[1]["repairs"] == []  # not a skill-only run's business
    assert [r["id"] for r in report_of({"scope": {"entity_type": "agent", "entity_ids": [str(agent_id)]}})[1]["repairs"]] == [repair_id]


def _waiting_on_the_repairs_lock(engine) -> int:
    with engine.connect() as connection:
        return connection.scalar(text(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
            "AND ((classid::bigint << 32) | objid::bigint) = :key"), {"key": REPAIRS_LOCK})


def test_every_export_of_a_run_lists_the_same_repairs_however_it_overlaps_a_restore(
        engine, write_ctx, keyring, committed_steward) -> None:
    """A restore reads its time before it commits. A run starting in between waits for the
    commit, so its exports all list the repair; a restore starting after a run started
    does not wait for it, reads a later time, and no export lists it."""
    from models.audit_chunks import audit_chunk_step, pending_chunks
    from models.audit_close import summarize_run
    from models.audit_runs import start_run
    from models.audit_tables import AuditRun
    from models.db import make_session_factory, transaction
    from models.job_lifecycle import create_job
    from tests.report_builders import build_report
    from tests.conftest import wait_for
    from tests.test_audit import run_audit

    sessions = make_session_factory(engine)
    with transaction(sessions) as session:
        world = World(session, write_ctx, committed_steward)
        first, second = world.agent("First").id, world.agent("Second").id
        _sql(session, "UPDATE agents SET name = name || ' (renamed by hand)' WHERE id IN (:a, :b)", a=first, b=second)

    def audit() -> uuid.UUID:
        with transaction(sessions) as session:
            earlier = set(session.scalars(select(AuditRun.id)))
            run_audit(session, keyring, {"verify_signatures": "heads"})
            [run] = [r for r in session.scalars(select(AuditRun)) if r.id not in earlier]
            return run.id

    def exported(run_id) -> list[str]:
        with transaction(sessions) as session:
            return [r["id"] for r in build_report(session, keyring=keyring, run_id=run_id)["repairs"]]

    restoring, starting = sessions(), sessions()  # closed at the end even when the test fails
    with ThreadPoolExecutor(1) as pool, restoring, starting:
        # 1. The restore has its time and is not committed; the run starts meanwhile.
        restoring.begin()
        repair_id = str(_restore(restoring, write_ctx, E.AGENT, first).repair.id)
        run = pool.submit(audit)
        wait_for(lambda: _waiting_on_the_repairs_lock(engine) == 1, timeout=20, what="the run to wait for the restore")
        restoring.commit()
        run_id = run.result(timeout=60)
        assert exported(run_id) == [repair_id]

        # 2. A run has started (its transaction still open); a restore meanwhile neither waits
        # for it nor shows in its exports, before or after it commits.
        starting.begin()
        job = create_job(starting, kind="audit.run", params={"verify_signatures": "heads"}, queue="audit")
        late = start_run(starting, job_id=job.id, params=job.params, keyring=keyring, embedder=EMBEDDER, chunk_entities=3).id

        def restore_second() -> str:
            with transaction(sessions) as session:
                return str(_restore(session, write_ctx, E.AGENT, second).repair.id)

        second_repair = pool.submit(restore_second).result(timeout=60)
        starting.commit()
        with transaction(sessions) as session:  # the run's chunks, as its worker would audit them
            for chunk_id in pending_chunks(session, late):
                while not audit_chunk_step(session, chunk_id=chunk_id, keyring=keyring, embedder=EMBEDDER, batch_size=2).done:
                    pass
            summarize_run(session, keyring=keyring, run_id=late)
        assert exported(late) == [repair_id]  # the second repair came after the run started
        assert second_repair != repair_id


def test_a_restore_that_would_take_a_name_back_from_another_entity_is_a_409(world, db_session, write_ctx) -> None:
    from models.errors import Conflict

    renamed, taker = world.skills[0], world.skills[1]
    _sql(db_session, "UPDATE skills SET name = 'Renamed by hand' WHERE id = :s", s=renamed.id)
    update_entity(db_session, entity_type=E.SKILL, entity_id=taker.id, changes={"name": "Assign skill 0"}, ctx=write_ctx)
    with pytest.raises(Conflict) as refused, db_session.begin_nested():
        _restore(db_session, write_ctx, E.SKILL, renamed.id)
    assert refused.value.extensions["field"] == "name"


def test_a_row_edited_to_hold_a_spelled_out_nul_escape_is_recorded_as_it_held_it(world, db_session, write_ctx, keyring) -> None:
    """A backslash and ``u0000`` is six ordinary characters, not a NUL: the record keeps the
    row's content as it was (the JSON text's ``\\u0000`` was taken for a NUL, and the
    content recorded only as text)."""
    agent = world.agent("Spelled Escape")
    _sql(db_session, "UPDATE agents SET attributes = CAST(:a AS jsonb) WHERE id = :i",
         a=json.dumps({"note": "\\u0000"}), i=agent.id)
    outcome = _restore(db_session, write_ctx, E.AGENT, agent.id)
    assert outcome.restored and outcome.repair.row_before["content"]["attributes"] == {"note": "\\u0000"}
    assert verify_repair(outcome.repair.as_json(), keyring)


def test_a_row_edited_to_hold_what_canonical_json_refuses_is_restored_and_recorded_as_text(world, db_session, write_ctx, keyring) -> None:
    agent = world.agent("Huge number")
    _sql(db_session, "UPDATE agents SET attributes = '{\"n\": 9007199254740993}' WHERE id = :a", a=agent.id)
    outcome = _restore(db_session, write_ctx, E.AGENT, agent.id)
    assert outcome.restored and db_session.get(Agent, agent.id).attributes == {}
    content = outcome.repair.row_before["content"]
    assert "9007199254740993" in content["json"] and "2**53" in content["unsignable"]
    assert verify_repair(outcome.repair.as_json(), keyring)


@pytest.mark.parametrize("unreadable", ["1e5000", "[" * 3000 + "]" * 3000, "1" + "0" * 400 + ".5",
                                        "100.0000000000000000001"])
def test_a_row_edited_to_hold_json_python_cannot_read_is_restored_and_recorded_as_text(
        world, db_session, write_ctx, keyring, unreadable) -> None:
    """It reads as a marker holding a NUL (models.db.load_json), which no jsonb column takes:
    recorded as is, it made the restore fail for good."""
    agent = world.agent("Unreadable")
    _sql(db_session, "UPDATE agents SET attributes = jsonb_build_object('n', CAST(:v AS jsonb)) WHERE id = :a",
         v=unreadable, a=agent.id)
    outcome = _restore(db_session, write_ctx, E.AGENT, agent.id)
    assert outcome.restored and db_session.get(Agent, agent.id).attributes == {}
    content = outcome.repair.row_before["content"]
    assert "plant.unreadable" in content["json"] and "NUL" in content["unsignable"]
    assert verify_repair(outcome.repair.as_json(), keyring)


@pytest.mark.parametrize("row_before", [{"content": {"n": 2**53 + 1}}, [-(2**63)]])
def test_a_repair_record_written_outside_plant_does_not_stop_later_reports(world, db_session, keyring, row_before) -> None:
    """``entity_repairs`` takes INSERTs and refuses DELETE: one row whose ``row_before`` holds
    what canonical JSON refuses made every later report covering the entity fail, for good,
    and ``verify_repair`` raise (helper-68). It does not verify, so no report lists it."""
    import os

    from models.reports import export_report, verify_report
    from models.report_view import report_view
    from tests.test_audit import run_audit

    agent = world.agent("Forged Repair")
    _sql(db_session, "INSERT INTO entity_repairs (id, entity_type, entity_id, version, head_link_hash, finding, row_before,"
         " actor, repaired_at, kid, signature) VALUES (:i, 'agent', :e, 1, :h, 'row-content-mismatch', CAST(:r AS jsonb),"
         " 'intruder', now() - interval '1 minute', 'kid', :s)",
         i=uuid.uuid4(), e=agent.id, h=os.urandom(32), r=json.dumps(row_before), s=os.urandom(64))
    record = repairs(db_session, entity_id=agent.id)[0].as_json()
    assert verify_repair(record, keyring) is False
    run_audit(db_session, keyring)
    run_id = db_session.scalar(text("SELECT id FROM audit_runs ORDER BY created_at DESC LIMIT 1"))
    report = export_report(db_session, run_id=run_id, keyring=keyring)
    assert verify_report(report, keyring)
    assert json.loads(report)["report"]["repairs"] == []
    assert report_view(db_session, run_id=run_id, keyring=keyring).repairs == ()


def test_a_repair_of_a_row_holding_a_float_jsonb_gives_back_otherwise_verifies_once_read_back(
        world, db_session, write_ctx, keyring) -> None:
    """``1e21`` passes canonical JSON but jsonb gives it back as an integer past 2**53: the record
    Plant signed read back as one it could not have signed, and was listed as unverified
    (helper-69). Such content is recorded as text, as what canonical JSON refuses is."""
    agent = world.agent("Float Row")
    _sql(db_session, "UPDATE agents SET attributes = jsonb_build_object('n', 1e21::numeric + 0.5) WHERE id = :a", a=agent.id)
    outcome = _restore(db_session, write_ctx, E.AGENT, agent.id)
    assert outcome.restored
    db_session.flush()
    db_session.expire_all()
    [stored] = repairs(db_session, entity_id=agent.id)
    record = stored.as_json()
    assert verify_repair(record, keyring) and "unsignable" in record["row_before"]["content"]


def test_a_certified_skills_changed_vector_is_restored_and_the_repair_is_recorded(db_session, write_ctx, steward, keyring) -> None:
    """The row equals its head, so nothing else would restore it; the audit's
    embedding-mismatch has a way out, and the repair record names it."""
    from models.certification import certify_skill
    from tests.test_audit import run_audit
    from tests.test_certification import _skill

    skill = _skill(db_session, write_ctx, steward, "Fraud Detection")
    assert certify_skill(db_session, skill_id=skill.id, notes=None, ctx=write_ctx).status == "certified"
    db_session.execute(text("UPDATE skills SET embedding = NULL WHERE id = :id"), {"id": skill.id})
    db_session.expire_all()
    assert [f.code for f in run_audit(db_session, keyring)[1]] == ["embedding-mismatch"]
    outcome = _restore(db_session, write_ctx, EntityType.SKILL, skill.id)
    assert outcome.restored and outcome.finding == "embedding-mismatch" and outcome.changed_fields == ()
    assert verify_repair(outcome.repair.as_json(), keyring=keyring)
    db_session.expire_all()
    assert run_audit(db_session, keyring)[1] == []
    assert not _restore(db_session, write_ctx, EntityType.SKILL, skill.id).restored  # nothing left to restore


def _insert_repair_row(session, entity_id, *, repaired_at, kid, signature, actor="operator:alice") -> uuid.UUID:
    """A repair record INSERTed through SQL, as the runtime role may: any actor, time and signature."""
    import os

    record_id = uuid.uuid4()
    _sql(session, "INSERT INTO entity_repairs (id, entity_type, entity_id, version, head_link_hash, finding, row_before,"
         " actor, repaired_at, kid, signature) VALUES (:i, 'agent', :e, 1, :h, 'row-content-mismatch', CAST(:r AS jsonb),"
         " :a, :t, :k, :s)", i=record_id, e=entity_id, h=os.urandom(32), r=json.dumps({"name": "Embezzler"}), a=actor,
         t=repaired_at, k=kid, s=signature)
    return record_id


def _signed_repair(session, keyring, entity_id, *, repaired_at) -> str:
    """A repair record signed by ``keyring``'s active key and dated ``repaired_at``: as a
    process on Plant's key would write it (or whoever holds a copy of the key)."""
    import os

    from models.repair import repair_statement

    record = EntityRepair(id=uuid.uuid4(), entity_type="agent", entity_id=entity_id, version=1,
                          head_link_hash=os.urandom(32), finding="row-content-mismatch",
                          row_before={"content": {"name": "Before"}}, actor="operator:test", repaired_at=repaired_at,
                          kid=keyring.active.kid)
    _, record.signature = keyring.sign(repair_statement(record))
    session.add(record)
    session.flush()
    return str(record.id)


def _latest_run(session):
    return session.execute(text("SELECT id, created_at FROM audit_runs ORDER BY created_at DESC LIMIT 1")).one()


def test_a_backdated_repair_row_inserted_after_a_run_s_first_export_does_not_change_its_report(
        world, db_session, keyring) -> None:
    """The report listed every row of ``entity_repairs`` dated before the run started, read
    at each export: one INSERTed later through SQL, dated before the run, with a junk
    signature, made the next export a different report, signed again by Plant's key."""
    import datetime
    import os

    from models.report_view import report_view
    from models.reports import export_report, verify_report
    from tests.test_audit import run_audit

    agent = world.agent("Innocent Agent")
    run_audit(db_session, keyring)
    run_id, created = _latest_run(db_session)
    first = export_report(db_session, run_id=run_id, keyring=keyring)
    assert json.loads(first)["report"]["repairs"] == []
    _insert_repair_row(db_session, agent.id, repaired_at=created - datetime.timedelta(days=3), kid=keyring.active.kid,
                       signature=os.urandom(64))
    second = export_report(db_session, run_id=run_id, keyring=keyring)
    assert second == first and verify_report(second, keyring)
    assert report_view(db_session, run_id=run_id, keyring=keyring).repairs == ()


def test_every_export_of_a_run_lists_the_signed_repairs_its_plan_named_whatever_is_written_later(
        world, db_session, keyring) -> None:
    """A run's plan names the repairs made before it started whose signature verifies; its
    close names them again. A record written after the start is never listed, whatever time
    it names, junk or signed with Plant's key (a lagging process, a copy of the key); nor is
    a junk record written before it."""
    import datetime
    import os

    from models.audit_chunks import audit_chunk_step, pending_chunks
    from models.audit_close import summarize_run
    from models.audit_runs import start_run
    from models.audit_tables import AuditRun
    from models.job_lifecycle import create_job
    from models.reports import export_report

    agent = world.agent("Repaired Agent")
    now = db_session.scalar(text("SELECT now()"))  # the run's start: this transaction's
    before = _signed_repair(db_session, keyring, agent.id, repaired_at=now - datetime.timedelta(days=1))
    _insert_repair_row(db_session, agent.id, repaired_at=now - datetime.timedelta(days=2), kid=keyring.active.kid,
                       signature=os.urandom(64))
    job = create_job(db_session, kind="audit.run", params={"verify_signatures": "heads"}, queue="audit")
    run_id = start_run(db_session, job_id=job.id, params=job.params, keyring=keyring, embedder=EMBEDDER, chunk_entities=3).id

    def listed() -> list[str]:
        db_session.expire_all()
        return [r["id"] for r in json.loads(export_report(db_session, run_id=run_id, keyring=keyring))["report"]["repairs"]]

    assert listed() == [before]  # while it runs
    _signed_repair(db_session, keyring, agent.id, repaired_at=now - datetime.timedelta(days=3))
    _insert_repair_row(db_session, agent.id, repaired_at=now - datetime.timedelta(days=4), kid=keyring.active.kid,
                       signature=os.urandom(64))
    assert listed() == [before]
    for chunk_id in pending_chunks(db_session, run_id):
        while not audit_chunk_step(db_session, chunk_id=chunk_id, keyring=keyring, embedder=EMBEDDER, batch_size=5).done:
            pass
    summarize_run(db_session, keyring=keyring, run_id=run_id)
    assert listed() == [before]  # once finished
    _signed_repair(db_session, keyring, agent.id, repaired_at=now - datetime.timedelta(days=5))
    assert listed() == [before]
    run = db_session.get(AuditRun, run_id)
    assert [r["id"] for r in run.plan_signed["repairs"]] == [r["id"] for r in run.close_signed["repairs"]] == [before]


def test_a_run_s_listed_repair_record_changed_past_its_guard_stops_the_export(world, db_session, keyring) -> None:
    import datetime

    from models.audit_record import AuditRecordInvalid
    from models.reports import export_report
    from tests.test_audit import run_audit

    agent = world.agent("Guarded Repair")
    now = db_session.scalar(text("SELECT now()"))
    record_id = _signed_repair(db_session, keyring, agent.id, repaired_at=now - datetime.timedelta(days=1))
    run_audit(db_session, keyring)
    run_id, _ = _latest_run(db_session)
    assert [r["id"] for r in json.loads(export_report(db_session, run_id=run_id, keyring=keyring))["report"]["repairs"]] \
        == [record_id]
    lift_guard(db_session, "UPDATE entity_repairs SET actor = 'someone else' WHERE id = :r", table="entity_repairs",
               r=record_id)
    db_session.expire_all()
    with pytest.raises(AuditRecordInvalid, match=f"repair record {record_id} is not the one Plant listed"):
        export_report(db_session, run_id=run_id, keyring=keyring)


def test_a_run_started_before_plans_named_repairs_exports_as_before_but_for_records_that_do_not_verify(
        world, db_session, keyring) -> None:
    """Its plan and close name no repairs, and still verify: its report lists the records
    made before it started whose signature verifies, so a junk row INSERTed later, dated
    before it, changes nothing either."""
    import datetime
    import os

    from models.audit_chunks import audit_chunk_step, pending_chunks
    from models.audit_close import summarize_run
    from models.audit_record import PLAN, _plan, _signed
    from models.audit_runs import AuditChunk, start_run
    from models.audit_tables import AuditRun
    from models.job_lifecycle import create_job
    from models.reports import export_report

    agent = world.agent("Legacy Agent")
    now = db_session.scalar(text("SELECT now()"))
    before = _signed_repair(db_session, keyring, agent.id, repaired_at=now - datetime.timedelta(days=1))
    _insert_repair_row(db_session, agent.id, repaired_at=now - datetime.timedelta(days=2), kid=keyring.active.kid,
                       signature=os.urandom(64))
    job = create_job(db_session, kind="audit.run", params={"verify_signatures": "heads"}, queue="audit")
    run = start_run(db_session, job_id=job.id, params=job.params, keyring=keyring, embedder=EMBEDDER, chunk_entities=3)
    chunks = list(db_session.scalars(select(AuditChunk).where(AuditChunk.run_id == run.id)))
    written = run.plan_signed["findings"]  # the plan as Plant signed it before it named repairs
    run.plan_signed = {**_signed(keyring, PLAN, {**_plan(run, chunks), "findings": written}), "findings": written}
    db_session.flush()
    for chunk_id in pending_chunks(db_session, run.id):
        while not audit_chunk_step(db_session, chunk_id=chunk_id, keyring=keyring, embedder=EMBEDDER, batch_size=5).done:
            pass
    summary = summarize_run(db_session, keyring=keyring, run_id=run.id)
    assert "audit-record-invalid" not in summary["by_code"]
    assert "repairs" not in db_session.get(AuditRun, run.id).close_signed
    first = export_report(db_session, run_id=run.id, keyring=keyring)
    assert [r["id"] for r in json.loads(first)["report"]["repairs"]] == [before]
    _insert_repair_row(db_session, agent.id, repaired_at=now - datetime.timedelta(days=3), kid=keyring.active.kid,
                       signature=os.urandom(64))
    assert export_report(db_session, run_id=run.id, keyring=keyring) == first
