"""Adversarial review of the constitution and of the certification and team-assignment jobs'
refusals: a deleted skill, descriptions padded to the length gate, and what GET /rules says."""

import datetime as dt

import pytest
from sqlalchemy import text

from models.certification import certify_skill
from models.errors import NotCertifiable
from models.certification import IssuedCertificate
from models.entities import EntityType, Skill
from models.registry import update_entity
from models.bulk_assignment import plan_assignment
from models.entities import Team
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
