"""The rules about seats, TEAM-03 (a team's members do not exceed its capacity) and AGENT-04
(a seated agent qualifies for its team), in the audit and at write time.

Writes refuse both states, so each is built as a release before those guards and rules
would have left it: through the model layer, with the guards and the rules' facts switched
off, so that every row is its signed head. The audit must report it from signed content
alone; a row edited outside Plant must not make another entity look in breach.
"""

import types
import uuid
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

import models.audit as audit
import models.registry as registry
from models.audit import audit_batch, check_entity, load_entities
from models.entities import EntityType
from models.ledger_store import store_digest
from models.registry import create_entity, update_entity
from tests.conftest import EMBEDDER
from tests.test_audit import run_audit, run_incremental

E = EntityType


@contextmanager
def as_an_older_release(monkeypatch: pytest.MonkeyPatch):
    """Writes as a release that had neither the seat guards nor the seat rules would make
    them: signed versions, the rows their heads. Nor the reference guards (a team deleted
    under its members, say: ``models.reference_guards``)."""
    with monkeypatch.context() as patched:
        patched.setattr(registry, "reference_fence", lambda *args, **kwargs: None)
        patched.setattr(registry, "guard_membership", lambda *args, **kwargs: None)
        patched.setattr(registry, "seat_problems_of", lambda *args, **kwargs: {})
        patched.setattr(registry, "signed_member_counts", lambda session, teams, members, keyring: {t.id: 0 for t in teams})
        yield


def _create(session: Session, ctx: Any, entity_type: EntityType, **data: Any) -> Any:
    return create_entity(session, entity_type=entity_type, ctx=ctx, data=data)


def _update(session: Session, ctx: Any, entity: Any, **changes: Any) -> Any:
    return update_entity(session, entity_type=entity.entity_type_value, entity_id=entity.id, changes=changes, ctx=ctx)


def seat_world(session: Session, ctx: Any, steward: uuid.UUID, *, capacity: int = 2) -> types.SimpleNamespace:
    """Two industries, two skills, two roles requiring the first skill, a team of the
    first role and industry, and an agent seated in it (legitimately)."""
    gov = {"governance_agent_id": steward}
    industry = _create(session, ctx, E.INDUSTRY, name="Seat Industry", code="SEAT", **gov)
    other_industry = _create(session, ctx, E.INDUSTRY, name="Other Industry", code="OTHR", **gov)
    skills = [_create(session, ctx, E.SKILL, name=f"Seat Skill {n}", skill_key=f"seat-skill-{n}", category="technical",
                      description="d", **gov) for n in (1, 2)]
    role = _create(session, ctx, E.JOB_ROLE, name="Seat Role", seniority="mid", required_skill_ids=[skills[0].id], **gov)
    other_role = _create(session, ctx, E.JOB_ROLE, name="Other Role", seniority="mid", required_skill_ids=[skills[0].id],
                         **gov)
    team = _create(session, ctx, E.TEAM, name="Seat Team", job_role_id=role.id, industry_id=industry.id,
                   capacity=capacity, **gov)
    agent = _create(session, ctx, E.AGENT, name="Seated Agent", job_role_id=role.id, industry_id=industry.id,
                    skill_ids=[skills[0].id], team_id=team.id, **gov)
    session.flush()
    return types.SimpleNamespace(industry=industry, other_industry=other_industry, skills=skills, role=role,
                                 other_role=other_role, team=team, agent=agent, gov=gov)


def _agent_like(session: Session, ctx: Any, world: types.SimpleNamespace, name: str, **data: Any) -> Any:
    return _create(session, ctx, E.AGENT, name=name, job_role_id=world.role.id, industry_id=world.industry.id,
                   skill_ids=[world.skills[0].id], **world.gov, **data)


def violations(findings: list) -> list[tuple[uuid.UUID, str]]:
    return sorted((f.entity_id, f.rule_id) for f in findings if f.code == "rule-violation")


def critical(findings: list) -> list[tuple[uuid.UUID, str]]:
    return [(f.entity_id, f.code) for f in findings if f.severity == "critical"]


def test_a_team_over_its_capacity_breaks_team_03_in_the_audit_and_at_write_time(
        db_session, write_ctx, steward, keyring, monkeypatch) -> None:
    world = seat_world(db_session, write_ctx, steward, capacity=1)
    with as_an_older_release(monkeypatch):
        _agent_like(db_session, write_ctx, world, "Second Agent", team_id=world.team.id)
    db_session.flush()
    _, findings = run_audit(db_session, keyring)
    assert critical(findings) == []  # every row is its signed head
    assert violations(findings) == [(world.team.id, "TEAM-03")]
    assert next(f.detail for f in findings if f.rule_id == "TEAM-03") == "TEAM-03 violated: 2 members, capacity 1"
    assert ("rule-violation", "TEAM-03") in {(f.code, f.rule_id) for f in check_entity(
        db_session, entity_id=world.team.id, keyring=keyring, embedder=EMBEDDER).findings}
    # A write that breaks nothing new is taken (a breach a release's rules find freezes nothing),
    # and its stored results agree with the audit; one that would newly break a seat is refused.
    assert "TEAM-03" in _update(db_session, write_ctx, world.team, description="still over capacity").constitution_l1["violations"]
    _update(db_session, write_ctx, world.team, capacity=2)  # the way out
    assert violations(run_audit(db_session, keyring)[1]) == []


WAYS_TO_BREAK_A_SEAT = {
    "team retired": (lambda w: (w.team, {"status": "retired"}), "team is retired"),
    "agent suspended": (lambda w: (w.agent, {"status": "suspended"}), "agent is suspended"),
    "team of another role": (lambda w: (w.team, {"job_role_id": w.other_role.id}), "team's job role is not the agent's"),
    "team of another industry": (lambda w: (w.team, {"industry_id": w.other_industry.id}), "industries differ"),
    "role requires another skill": (lambda w: (w.role, {"required_skill_ids": [s.id for s in w.skills]}),
                                    "agent lacks 1 required skill(s)"),
}


@pytest.mark.parametrize("way", list(WAYS_TO_BREAK_A_SEAT))
def test_a_seated_agent_that_does_not_qualify_breaks_agent_04_in_the_audit_and_at_write_time(
        db_session, write_ctx, steward, keyring, monkeypatch, way) -> None:
    world = seat_world(db_session, write_ctx, steward)
    change, reason = WAYS_TO_BREAK_A_SEAT[way]
    entity, changes = change(world)
    with as_an_older_release(monkeypatch):
        _update(db_session, write_ctx, entity, **changes)
    db_session.flush()
    _, findings = run_audit(db_session, keyring)
    assert critical(findings) == []
    assert violations(findings) == [(world.agent.id, "AGENT-04")]
    assert next(f.detail for f in findings if f.rule_id == "AGENT-04") == (
        f"AGENT-04 violated: in team {world.team.id}: {reason}")
    assert ("rule-violation", "AGENT-04") in {(f.code, f.rule_id) for f in check_entity(
        db_session, entity_id=world.agent.id, keyring=keyring, embedder=EMBEDDER).findings}
    # A write that breaks nothing new is taken, and its stored results agree with the audit.
    assert "AGENT-04" in _update(db_session, write_ctx, world.agent, description="still seated").constitution_l1["violations"]
    _update(db_session, write_ctx, world.agent, team_id=None)  # the way out
    assert violations(run_audit(db_session, keyring)[1]) == []


def test_a_team_row_edited_outside_plant_makes_no_member_look_unqualified(db_session, write_ctx, steward,
                                                                          keyring) -> None:
    world = seat_world(db_session, write_ctx, steward)
    db_session.execute(text("UPDATE teams SET status = 'retired' WHERE id = :id"), {"id": world.team.id})
    db_session.expire_all()
    _, findings = run_audit(db_session, keyring)
    assert critical(findings) == [(world.team.id, "row-content-mismatch")]
    assert violations(findings) == []


def test_a_signed_breach_hidden_by_a_row_edited_outside_plant_is_reported_once_the_row_is_restored(
        db_session, write_ctx, steward, keyring, monkeypatch) -> None:
    world = seat_world(db_session, write_ctx, steward)
    with as_an_older_release(monkeypatch):
        _update(db_session, write_ctx, world.team, status="retired")
    db_session.execute(text("UPDATE teams SET status = 'active' WHERE id = :id"), {"id": world.team.id})
    db_session.expire_all()
    _, findings = run_audit(db_session, keyring)
    assert critical(findings) == [(world.team.id, "row-content-mismatch")]
    # Put back as signed (``plant entity restore`` refuses: the restored row must keep the seat rules).
    db_session.execute(text("UPDATE teams SET status = 'retired' WHERE id = :id"), {"id": world.team.id})
    db_session.expire_all()
    _, findings = run_audit(db_session, keyring)
    assert critical(findings) == [] and violations(findings) == [(world.agent.id, "AGENT-04")]


def test_an_agent_row_edited_into_a_full_team_is_its_own_finding_not_the_team_s(db_session, write_ctx, steward,
                                                                               keyring) -> None:
    world = seat_world(db_session, write_ctx, steward, capacity=1)
    intruder = _agent_like(db_session, write_ctx, world, "Intruder")
    db_session.flush()
    db_session.execute(text("UPDATE agents SET team_id = :team WHERE id = :id"), {"team": world.team.id, "id": intruder.id})
    db_session.expire_all()
    _, findings = run_audit(db_session, keyring)
    assert critical(findings) == [(intruder.id, "row-content-mismatch")]
    assert violations(findings) == []


def test_the_incremental_audit_judges_the_seats_it_examines(db_session, write_ctx, steward, keyring,
                                                            monkeypatch) -> None:
    world = seat_world(db_session, write_ctx, steward, capacity=1)
    store_digest(db_session, keyring=keyring)
    with as_an_older_release(monkeypatch):
        second = _agent_like(db_session, write_ctx, world, "Second Agent", team_id=world.team.id)
        _update(db_session, write_ctx, world.team, description="examined")
        _update(db_session, write_ctx, second, status="suspended")
    db_session.flush()
    _, findings = run_incremental(db_session, keyring)
    assert violations(findings) == sorted([(world.team.id, "TEAM-03"), (second.id, "AGENT-04")])


def _committed_world(engine, write_ctx, steward) -> types.SimpleNamespace:
    with Session(engine) as session, session.begin():
        world = seat_world(session, write_ctx, steward, capacity=1)
        world.other_team = _create(session, write_ctx, E.TEAM, name="Other Team", job_role_id=world.role.id,
                                   industry_id=world.industry.id, capacity=2, **world.gov)
        world.waiting = _agent_like(session, write_ctx, world, "Waiting Agent")
        return types.SimpleNamespace(**{name: getattr(value, "id", value) for name, value in vars(world).items()})


def _move_out_then_change_the_team_s_role(session, ctx, world) -> list[uuid.UUID]:
    update_entity(session, entity_type=E.AGENT, entity_id=world.agent, changes={"team_id": world.other_team}, ctx=ctx)
    update_entity(session, entity_type=E.TEAM, entity_id=world.team, changes={"job_role_id": world.other_role}, ctx=ctx)
    return [world.agent]


def _widen_the_team_then_seat_another(session, ctx, world) -> list[uuid.UUID]:
    update_entity(session, entity_type=E.TEAM, entity_id=world.team, changes={"capacity": 2}, ctx=ctx)
    update_entity(session, entity_type=E.AGENT, entity_id=world.waiting, changes={"team_id": world.team}, ctx=ctx)
    return [world.team]


@pytest.mark.parametrize("writes", [_move_out_then_change_the_team_s_role, _widen_the_team_then_seat_another])
def test_seats_changed_by_writes_committed_while_a_batch_reads_are_not_taken_for_a_breach(
        engine, write_ctx, keyring, committed_steward, monkeypatch, writes) -> None:
    """Legitimate writes committed after a batch read its rows and versions but before the
    seat facts: the rows it holds and the facts it reads then disagree, which a second
    check with the rows locked settles."""
    world = _committed_world(engine, write_ctx, committed_steward)
    real_facts, audited = audit.seat_facts, []

    def write_first_then_read(session, entities, keyring_):
        if not audited:
            with Session(engine) as writer, writer.begin():
                audited.extend(writes(writer, write_ctx, world))
        return real_facts(session, entities, keyring_)

    monkeypatch.setattr(audit, "seat_facts", write_first_then_read)
    kind = E.AGENT if writes is _move_out_then_change_the_team_s_role else E.TEAM
    with Session(engine) as auditor, auditor.begin():
        entities = load_entities(auditor, kind, [world.agent if kind is E.AGENT else world.team])
        result = audit_batch(auditor, entities, keyring=keyring, embedder=EMBEDDER, signatures="all", append_only=True)
    assert audited and result.entities == 1
    assert [f for f in result.findings if f.code == "rule-violation"] == []


def test_a_seat_the_guard_judged_is_not_read_again_for_agent_04(db_session, write_ctx, steward, monkeypatch) -> None:
    """An agent written into a team, or changed in it, has its seat judged by the assignment
    guard under the team's lock; the rule subject read the team and role again (two more
    queries a write) to say the same. It takes the guard's verdict; a write the guard does not
    judge (a description) still reads it."""
    world = seat_world(db_session, write_ctx, steward)
    judged_twice = []
    read = registry.seat_problems_of
    monkeypatch.setattr(registry, "seat_problems_of", lambda *args, **kwargs: judged_twice.append(1) or read(*args, **kwargs))
    _update(db_session, write_ctx, world.agent, skill_ids=[s.id for s in world.skills])  # judged by the guard
    joined = _agent_like(db_session, write_ctx, world, "Joining Agent", team_id=world.team.id)  # judged by the guard
    assert judged_twice == [] and joined.constitution_l1["passed"]
    _update(db_session, write_ctx, world.agent, description="not a seat change")
    assert judged_twice == [1]
