"""Deleted entities in certification, assignment and references (a deleted skill certified, a
deleted agent seated or named governor, a write newly naming a deleted entity), descriptions
padded to the length gate, and what GET /rules says of AGENT-04."""

import datetime as dt

import pytest
from sqlalchemy import text

from models.certification import certify_skill
from models.errors import InvalidInput, NotCertifiable
from models.certificates import IssuedCertificate
from models.entities import EntityType, Skill
from models.registry import update_entity
from models.bulk_plan import plan_assignment
from models.entities import Agent, Team
from models.registry import create_entity
from tests.test_assignment import world  # noqa: F401  (fixture)
from tests.test_certification import _skill

E = EntityType
DELETED = {"deleted_at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC)}


def test_a_deleted_skill_is_not_certified(db_session, write_ctx, steward) -> None:
    """A soft-deleted draft was certified: a certificate id issued, signed and recorded for a
    skill no listing shows (review: rules)."""
    skill = _skill(db_session, write_ctx, steward, "Gone Skill")
    update_entity(db_session, entity_type=E.SKILL, entity_id=skill.id, changes=DELETED, ctx=write_ctx)
    with pytest.raises(NotCertifiable) as refused:
        certify_skill(db_session, skill_id=skill.id, notes=None, ctx=write_ctx)
    problem = refused.value.problem(409)
    assert problem["type"] == "/problems/not-certifiable" and problem["deleted"] is True, problem
    stored = db_session.get(Skill, skill.id)
    assert (stored.status, stored.certificate, stored.version) == ("draft", None, 2)
    assert db_session.query(IssuedCertificate).filter_by(skill_id=skill.id).count() == 0


@pytest.mark.parametrize("padding", [" \u200b" * 7, " -" * 7, " \u3164" * 7, " \u2800" * 7, " \ufe0f" * 7])
def test_the_length_gate_counts_no_invisible_or_punctuation_run_as_a_word(db_session, write_ctx, steward, padding) -> None:
    """``str.split`` counted eight runs, so one visible word and seven zero-width spaces (or
    dashes) passed the eight-word gate and were certified."""
    skill = _skill(db_session, write_ctx, steward, "Padded Skill", description="Pipelines" + padding)
    outcome = certify_skill(db_session, skill_id=skill.id, notes=None, ctx=write_ctx)
    assert outcome.status == "rejected", outcome
    assert [g["gate"] for g in outcome.failed_gates] == ["description-length"]
    assert outcome.failed_gates[0]["detail"].startswith("1 words")


def test_the_length_gate_still_counts_words_of_every_script(db_session, write_ctx, steward) -> None:
    skill = _skill(db_session, write_ctx, steward, "Words Skill",
                   description="Café été naïve 日本語 Ελληνικά русский 3D العربية")
    assert certify_skill(db_session, skill_id=skill.id, notes=None, ctx=write_ctx).status == "certified"


def test_a_bulk_plan_gives_no_seat_to_a_deleted_agent(world, db_session, write_ctx) -> None:  # noqa: F811
    """The plan's eligibility left deletion out (``ineligibility`` has it): a deleted agent
    listed by id took the only seat in the plan, its batch then refused it (``not-eligible``),
    and the clean agent was left out as ``eligible-teams-full`` until a second plan."""
    team = world.team("Solo", capacity=1)
    gone, clean = world.agent("Gone agent"), world.agent("Clean agent")
    update_entity(db_session, entity_type=E.AGENT, entity_id=gone.id, changes=DELETED, ctx=write_ctx)
    vector = str(list(db_session.get(Team, team.id).embedding))  # the deleted agent the better match
    db_session.execute(text("UPDATE agents SET embedding = :v WHERE id = :id"), {"v": vector, "id": gone.id})
    plan = plan_assignment(db_session, agent_ids=[gone.id, clean.id], all_unassigned=False)
    assert {plan.agents[a].id: plan.teams[t].id for a, t in plan.placements.items()} == {clean.id: team.id}
    assert {plan.agents[i].id: reason for i, reason in plan.unplaced.items()} == {gone.id: "no-eligible-team"}


def test_a_deleted_agent_is_not_named_a_governance_agent(world, db_session, write_ctx) -> None:  # noqa: F811
    """A governance agent must be active when it is named (README, "The constitution"): one
    deleted with its status left ``active`` was taken, and governed a new industry (L0-01 passing)."""
    gone = world.agent("Gone governor")
    update_entity(db_session, entity_type=E.AGENT, entity_id=gone.id, changes=DELETED, ctx=write_ctx)
    with pytest.raises(InvalidInput) as refused:
        create_entity(db_session, entity_type=E.INDUSTRY, ctx=write_ctx,
                      data={"name": "Ghost governed", "code": "GHO", "governance_agent_id": gone.id})
    assert [e["field"] for e in refused.value.extensions["errors"]] == ["governance_agent_id"]
    assert "is deleted" in refused.value.extensions["errors"][0]["message"]


def test_a_write_does_not_newly_name_a_deleted_entity(world, db_session, write_ctx, monkeypatch) -> None:  # noqa: F811
    """A reference to a deleted entity met the rules that ask for one (AGENT-01 a skill,
    TEAM-02 a job role...): an agent created holding only a deleted skill, a team of a deleted
    role, passed. Named anew they are 422 naming the field; one named before its deletion (by a
    release before the reference guards, which refuse that deletion now) stays."""
    from tests.test_seat_rules import as_an_older_release

    skill, role = world.skills[0], world.other_role
    agent = world.agent("Holder", skills=world.skills[:2])
    with as_an_older_release(monkeypatch):
        for entity_type, entity_id in ((E.SKILL, skill.id), (E.JOB_ROLE, role.id)):
            update_entity(db_session, entity_type=entity_type, entity_id=entity_id, changes=DELETED, ctx=write_ctx)
    cases = [
        (E.AGENT, {"name": "New holder", "job_role_id": world.role.id, "industry_id": world.industry.id,
                   "skill_ids": [skill.id]}, "skill_ids"),
        (E.TEAM, {"name": "Ghost team", "job_role_id": role.id, "capacity": 2}, "job_role_id"),
        (E.JOB_ROLE, {"name": "Ghost role", "seniority": "mid", "required_skill_ids": [skill.id]}, "required_skill_ids"),
    ]
    for entity_type, data, field in cases:
        with db_session.begin_nested(), pytest.raises(InvalidInput) as refused:
            world.make(entity_type, **data)
        assert [e["field"] for e in refused.value.extensions["errors"]] == [field], refused.value.extensions
        assert "is deleted" in refused.value.extensions["errors"][0]["message"]
    # Held before the deletion: kept through a change of anything else.
    update_entity(db_session, entity_type=E.AGENT, entity_id=agent.id, changes={"description": "still here"}, ctx=write_ctx)
    assert {s.id for s in db_session.get(Agent, agent.id).skills} == {s.id for s in world.skills[:2]}


def test_get_rules_names_every_reason_agent_04_finds(client) -> None:
    """GET /rules said AGENT-04 asks that both be active; its check (models.membership.ineligibility)
    also finds an agent or a team deleted, which an active status does not rule out."""
    from types import SimpleNamespace

    from models.membership import ineligibility

    agent = dict(status="active", deleted_at=None, job_role_id=1, industry_id=1, skills=[])
    team = dict(status="active", deleted_at=None, job_role_id=1, industry_id=1)
    breaches = [({"status": "suspended"}, {}), ({"deleted_at": DELETED["deleted_at"]}, {}), ({}, {"status": "retired"}),
                ({}, {"deleted_at": DELETED["deleted_at"]}), ({"job_role_id": 2}, {}), ({"industry_id": 2}, {})]
    words = {"suspended": "active", "retired": "active", "deleted": "not deleted", "job role": "job role",
             "industries": "industries", "skill": "every skill"}
    rules = {r["id"]: r for r in client.get("/api/v1/rules").get_json()["items"]}
    described = rules["AGENT-04"]["description"]
    found = [reason for a, t in breaches for reason in ineligibility(
        SimpleNamespace(**{**agent, **a}), SimpleNamespace(**{**team, **t}), set())]
    found += ineligibility(SimpleNamespace(**agent), SimpleNamespace(**team), {"a skill"})
    assert len(found) == len(breaches) + 1
    for reason in found:
        assert any(key in reason and word in described for key, word in words.items()), (reason, described)
