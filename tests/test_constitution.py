"""The constitution's catalogue over time: what a write may leave broken when a release adds or
tightens a rule, and the catalogue version that results, audit summaries and reports name.

A rule is added here as a release would add it (:func:`added`): to ``RULES`` and the tables
derived from it, in this process only.
"""

from __future__ import annotations

from dataclasses import replace
import json
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from models import audit_chunks, audit_close
from models import constitution as c
from models.assignment import assign_agent
from models.audit_chunks import audit_chunk_step, pending_chunks
from models.audit_close import summarize_run
from models.audit_record import sign_close
from models.audit_runs import start_run
from models.audit_tables import AuditRun
from models.bulk_apply import apply_batch
from models.certification import certify_skill
from models.chain import history
from models.entities import Agent, EntityType
from models.errors import ConstitutionViolation
from models.job_lifecycle import create_job
from models.ledger_store import store_digest
from models.registry import create_entity, update_entity
from models.report_view import report_view
from models.reports import export_report, verify_report
from tests.test_assignment import World
from tests.conftest import EMBEDDER
from tests.test_audit import run_audit, run_incremental
from tests.test_certification import GOOD
from tests.test_registry_api import API, gov, world  # noqa: F401 - fixtures

SHORT_DESCRIPTION = c.Rule("SKILL-90", c.L1, c.T.SKILL, "Skill description has at least 10 words", c.E,
                           lambda s: len((s.content.get("description") or "").split()) >= 10)
AGENT_DESCRIBED = c.Rule("AGENT-90", c.L1, c.T.AGENT, "Agent description is not blank", c.E,
                         lambda s: bool((s.content.get("description") or "").strip()))
# A rule a stand-down itself breaks: how a later release could have made retiring impossible.
RETIRED_WITH_NOTES = c.Rule("AGENT-90", c.L1, c.T.AGENT, "A retired agent says why in its governance notes", c.E,
                            lambda s: s.content.get("status") != "retired" or bool(s.content.get("governance_notes")))


def added(monkeypatch: pytest.MonkeyPatch, rule: c.Rule) -> c.Rule:
    """``rule`` in the catalogue, as a release adding it would have it."""
    monkeypatch.setattr(c, "RULES", (*c.RULES, rule))
    monkeypatch.setitem(c.RULES_BY_ID, rule.id, rule)
    for kind in c.EntityType:
        if rule.applies_to(kind):
            monkeypatch.setitem(c.RULES_FOR, (rule.level, kind), (*c.RULES_FOR[rule.level, kind], rule))
    return rule


@pytest.fixture
def assign_world(db_session: Session, write_ctx: Any, steward: Any) -> World:
    return World(db_session, write_ctx, steward)


# Writes refuse only what they break


def test_a_rule_added_to_the_catalogue_freezes_no_entity_it_finds_against(client, gov, world, monkeypatch) -> None:  # noqa: F811
    """The reviewer's reproduction: a release adds SKILL-90, which both skills break (their
    descriptions have 6 words). Retiring one, or changing something else of the other, is
    allowed; each stays non-compliant until a change fixes it; a change that breaks another
    rule is still refused, naming that rule alone."""
    added(monkeypatch, SHORT_DESCRIPTION)
    first, second = (f"{API}/genesis/skills/{s['id']}" for s in world["skills"])
    retired = client.patch(first, json={"status": "retired"})
    assert retired.status_code == 200, retired.get_json()
    assert retired.get_json()["constitution"]["l1"]["violations"] == ["SKILL-90"]  # retired, not compliant
    tagged = client.patch(second, json={"tags": ["night"]})
    assert tagged.status_code == 200, tagged.get_json()
    assert tagged.get_json()["constitution"]["l1"]["violations"] == ["SKILL-90"]

    blanked = client.patch(second, json={"name": "  "})
    assert blanked.status_code == 422
    problem = blanked.get_json()
    assert problem["type"] == "/problems/constitution-violation"
    assert [v["rule"] for v in problem["violations"]] == ["SKILL-01"]
    assert "already broken, and left so: SKILL-90" in problem["detail"]
    assert client.get(second).get_json()["version"] == tagged.get_json()["version"]  # nothing written

    fixed = client.patch(second, json={"description": "Route planning for warehouses, fleets and every depot we serve"})
    assert fixed.status_code == 200 and fixed.get_json()["constitution"]["l1"]["passed"]
    created = client.post(f"{API}/genesis/skills", json={**gov, "name": "Yard Planning", "category": "technical",
                                                          "description": "Too short"})
    assert created.status_code == 422 and [v["rule"] for v in created.get_json()["violations"]] == ["SKILL-90"]


def test_a_change_that_only_stands_an_entity_down_is_never_refused_for_a_rule(client, world, monkeypatch) -> None:  # noqa: F811
    """Retiring (and unseating) is how a finding is answered, even under a rule that retiring
    itself would break; a change that does more than stand down is judged as any other."""
    added(monkeypatch, RETIRED_WITH_NOTES)
    agent = f"{API}/agents/{world['agent']['id']}"
    more = client.patch(agent, json={"status": "retired", "team_id": None, "description": "Gone"})
    assert more.status_code == 422 and [v["rule"] for v in more.get_json()["violations"]] == ["AGENT-90"]
    retired = client.patch(agent, json={"status": "retired", "team_id": None})
    assert retired.status_code == 200, retired.get_json()
    assert retired.get_json()["constitution"]["l1"]["violations"] == ["AGENT-90"]
    assert client.get(f"{API}/teams/{world['team']['id']}").get_json()["members"] == []


def test_an_audit_still_reports_what_a_write_left_broken(db_session, write_ctx, steward, keyring, monkeypatch) -> None:
    skill = create_entity(db_session, entity_type=EntityType.SKILL, ctx=write_ctx, data={
        "name": "Short Skill", "skill_key": "short-skill", "category": "technical", "description": "Six words of plain description here",
        "governance_agent_id": steward})
    added(monkeypatch, SHORT_DESCRIPTION)
    update_entity(db_session, entity_type=EntityType.SKILL, entity_id=skill.id, changes={"tags": ["kept"]}, ctx=write_ctx)
    summary, findings = run_audit(db_session, keyring, {"scope": {"entity_type": "skill"}})
    assert [(f.entity_id, f.code, f.rule_id) for f in findings] == [(skill.id, "rule-violation", "SKILL-90")]
    assert summary["non_compliant"] == 1


def test_a_certified_skill_a_new_rule_finds_against_can_be_retired(db_session, write_ctx, steward, monkeypatch) -> None:
    skill = create_entity(db_session, entity_type=EntityType.SKILL, ctx=write_ctx, data={
        "name": "Certified Before", "skill_key": "certified-before", "category": "technical", "description": GOOD,
        "governance_agent_id": steward})
    assert certify_skill(db_session, skill_id=skill.id, notes=None, ctx=write_ctx).status == "certified"
    added(monkeypatch, c.Rule("SKILL-90", c.L1, c.T.SKILL, "Skill has an industry", c.E, lambda s: bool(s.content.get("industry_id"))))
    retired = update_entity(db_session, entity_type=EntityType.SKILL, entity_id=skill.id, changes={"status": "retired"},
                            ctx=write_ctx)
    assert retired.status == "retired" and retired.constitution_l1["violations"] == ["SKILL-90"]


def test_a_certification_of_a_skill_a_new_rule_finds_against_records_its_rejection(
        db_session, write_ctx, steward, monkeypatch) -> None:
    skill = create_entity(db_session, entity_type=EntityType.SKILL, ctx=write_ctx, data={
        "name": "Drafted Before", "skill_key": "drafted-before", "category": "technical", "description": GOOD,
        "governance_agent_id": steward})
    added(monkeypatch, c.Rule("SKILL-90", c.L1, c.T.SKILL, "Skill has an industry", c.E, lambda s: bool(s.content.get("industry_id"))))
    outcome = certify_skill(db_session, skill_id=skill.id, notes="needs an industry", ctx=write_ctx)
    assert outcome.status == "rejected" and outcome.version == 2
    assert outcome.failed_gates == [{"gate": "constitution", "detail": "rules not satisfied", "rules": ["SKILL-90"]}]
    assert [v.version for v in history(db_session, entity_id=skill.id)] == [1, 2]


def test_agents_a_new_rule_finds_against_are_still_assigned_singly_and_in_bulk(
        assign_world, db_session, write_ctx, monkeypatch) -> None:
    team = assign_world.team("Rule change team", capacity=3)
    lone, bulk, fine = (assign_world.agent(name) for name in ("Undescribed lone", "Undescribed bulk", "Described"))
    update_entity(db_session, entity_type=EntityType.AGENT, entity_id=fine.id, changes={"description": "Has one"}, ctx=write_ctx)
    added(monkeypatch, AGENT_DESCRIBED)
    assert assign_agent(db_session, agent_id=lone.id, team_id=team.id, ctx=write_ctx).team_id == team.id
    assert apply_batch(db_session, [(bulk.id, team.id), (fine.id, team.id)], ctx=write_ctx) == []
    assert {db_session.get(Agent, a.id).team_id for a in (lone, bulk, fine)} == {team.id}
    assert db_session.get(Agent, bulk.id).constitution_l1["violations"] == ["AGENT-90"]


def test_a_lifted_guard_refuses_a_change_though_the_entity_was_written_under_it(db_session, write_ctx, steward) -> None:
    """L0-03 is about the database, not the entity: broken before a change and after it, the
    change is still refused."""
    skill = create_entity(db_session, entity_type=EntityType.SKILL, ctx=write_ctx, data={
        "name": "Guarded", "skill_key": "guarded", "category": "technical", "description": "Written under the guards",
        "governance_agent_id": steward})
    db_session.execute(text("SET CONSTRAINTS ALL IMMEDIATE"))  # ALTER TABLE refuses a table with deferred checks pending
    db_session.execute(text("ALTER TABLE entity_versions DISABLE TRIGGER entity_versions_no_update_delete"))
    db_session.execute(text("SET CONSTRAINTS ALL DEFERRED"))
    db_session.info.pop("append_only_enforced", None)  # the registry reads it once per session
    with pytest.raises(ConstitutionViolation, match="L0-03"):
        update_entity(db_session, entity_type=EntityType.SKILL, entity_id=skill.id, changes={"status": "retired"},
                      ctx=write_ctx)


# The catalogue's version


def test_the_catalogue_version_is_pinned() -> None:
    """A change to the catalogue (a rule added, removed, reworded, moved or given another
    severity, or a check changed with ``CHECKS_REVISION`` bumped) changes its version: say
    the new one here, so that the change, which every audit summary after it names, is made
    on purpose."""
    assert c.constitution_version() == "1fddc58001b9e206935366f1d40b8c7c533bba42db5bff5a5741afa8ea6bf780"


def test_the_catalogue_version_changes_with_every_part_of_a_rule_s_contract() -> None:
    rules, revision = c.RULES, c.CHECKS_REVISION
    first = rules[0]
    changed = [
        (*rules, SHORT_DESCRIPTION),
        rules[1:],
        (replace(first, description=first.description + "."), *rules[1:]),
        (replace(first, severity=c.W), *rules[1:]),
        (replace(first, level=c.L1), *rules[1:]),
        (replace(first, entity_type=c.T.SKILL), *rules[1:]),
        (replace(first, id="L0-99"), *rules[1:]),
        (rules[1], rules[0], *rules[2:]),
    ]
    versions = [c.catalogue_version(r, revision) for r in changed] + [c.catalogue_version(rules, revision + 1)]
    assert c.constitution_version() == c.catalogue_version(rules, revision) not in versions
    assert len(set(versions)) == len(versions)


def test_an_entity_s_stored_results_name_the_catalogue_they_were_checked_against(client, world, monkeypatch) -> None:  # noqa: F811
    """Results stored before a rule change say so: they name a version that is not the current one."""
    url = f"{API}/genesis/industries/{world['industry']['id']}"
    old = c.constitution_version()
    assert {level["constitution_version"] for level in client.get(url).get_json()["constitution"].values()} == {old}
    added(monkeypatch, SHORT_DESCRIPTION)
    assert {level["constitution_version"] for level in client.get(url).get_json()["constitution"].values()} == {old}
    written = client.patch(url, json={"description": "Moving goods by road"}).get_json()
    assert {level["constitution_version"] for level in written["constitution"].values()} == {c.constitution_version()} != {old}


def test_the_rules_endpoint_names_the_catalogue_s_version(client, monkeypatch) -> None:
    listed = client.get(f"{API}/rules").get_json()
    assert listed["version"] == c.constitution_version()
    added(monkeypatch, SHORT_DESCRIPTION)
    now = client.get(f"{API}/rules").get_json()
    assert now["version"] == c.constitution_version() != listed["version"]
    assert [r["id"] for r in now["items"]] == [*(r["id"] for r in listed["items"]), "SKILL-90"]


# What audits checked against


def _audited(session: Session, keyring: Any, *, between_batches: Any = None) -> AuditRun:
    """A closed run over the skills, one entity a batch; ``between_batches()`` runs after the first."""
    job = create_job(session, kind="audit.run", params={"scope": {"entity_type": "skill"}}, queue="audit")
    run = start_run(session, job_id=job.id, params=job.params, keyring=keyring, embedder=EMBEDDER, chunk_entities=50_000)
    for chunk_id in pending_chunks(session, run.id):
        while not audit_chunk_step(session, chunk_id=chunk_id, keyring=keyring, embedder=EMBEDDER, batch_size=1).done:
            if between_batches is not None:
                between_batches()
                between_batches = None
    summarize_run(session, run_id=run.id, keyring=keyring)
    return run


def _report(session: Session, run: AuditRun, keyring: Any) -> dict[str, Any]:
    document = export_report(session, run_id=run.id, keyring=keyring)
    verify_report(document, keyring)
    return json.loads(document)["report"]


@pytest.fixture
def skills(db_session: Session, write_ctx: Any, steward: Any) -> list[Any]:
    return [create_entity(db_session, entity_type=EntityType.SKILL, ctx=write_ctx, data={
        "name": f"Checked skill {n}", "skill_key": f"checked-skill-{n}", "category": "technical",
        "description": "Checked against the rules of its day", "governance_agent_id": steward}) for n in range(3)]


def test_a_run_s_summary_and_signed_report_name_the_catalogue_it_checked_against(
        db_session, skills, keyring, monkeypatch) -> None:
    before = _audited(db_session, keyring)
    version = c.constitution_version()
    assert before.summary["constitution_versions"] == [version]
    assert _report(db_session, before, keyring)["run"]["summary"]["constitution_versions"] == [version]
    assert report_view(db_session, run_id=before.id, keyring=keyring).figures["constitution_versions"] == [version]

    added(monkeypatch, SHORT_DESCRIPTION)
    after = _audited(db_session, keyring)
    assert after.summary["constitution_versions"] == [c.constitution_version()] != [version]
    assert after.summary["by_rule"] == {"SKILL-90": len(skills)}
    assert _report(db_session, after, keyring)["run"]["summary"]["constitution_versions"] == [c.constitution_version()]


def test_a_run_whose_batches_checked_against_two_catalogues_names_both(db_session, skills, keyring, monkeypatch) -> None:
    """Workers of two releases sharing a run (a rolling upgrade): each chunk's signed
    checkpoint names what its batches checked against, and the summary every one of them."""
    old, never = c.constitution_version(), c.Rule("SKILL-90", c.L1, c.T.SKILL, "No skill complies", c.E, lambda s: False)
    run = _audited(db_session, keyring, between_batches=lambda: added(monkeypatch, never))
    assert run.summary["constitution_versions"] == sorted([old, c.constitution_version()])
    assert run.summary["by_rule"] == {"SKILL-90": run.summary["total_entities"] - 1}  # the first batch's, one skill, knew none


def test_a_chunk_an_earlier_release_began_is_named_unrecorded_when_this_one_finishes_it(
        db_session, skills, keyring, monkeypatch) -> None:
    """A rolling upgrade: a chunk checkpointed part-way by a release that recorded no catalogue
    version, finished by this one, checked some entities against a catalogue not known
    (helper-126: the summary named the current one alone)."""
    real_sign, calls = audit_chunks.sign_checkpoint, []

    def earlier_release_first(run: Any, chunk: Any, keyring_: Any, **named: Any) -> None:
        calls.append(1)
        if len(calls) == 2:  # the first batch's checkpoint, as an earlier release wrote it (the plan's is the first)
            chunk.counters = {k: v for k, v in chunk.counters.items() if k != "constitution_versions"}
        real_sign(run, chunk, keyring_, **named)

    monkeypatch.setattr(audit_chunks, "sign_checkpoint", earlier_release_first)
    run = _audited(db_session, keyring)
    assert run.summary["constitution_versions"] == sorted(["unrecorded", c.constitution_version()])


def test_an_incremental_run_names_the_catalogue_only_if_it_checked_an_entity(db_session, skills, write_ctx, keyring) -> None:
    store_digest(db_session, keyring=keyring)
    assert run_incremental(db_session, keyring)[0]["constitution_versions"] == []  # nothing changed: no rule checked
    update_entity(db_session, entity_type=EntityType.SKILL, entity_id=skills[0].id, changes={"tags": ["new"]}, ctx=write_ctx)
    assert run_incremental(db_session, keyring)[0]["constitution_versions"] == [c.constitution_version()]


def test_a_run_closed_before_summaries_named_the_catalogue_still_exports_and_verifies(
        db_session, skills, keyring, monkeypatch) -> None:
    """A run an earlier release closed: its signed summary has no ``constitution_versions``;
    it exports, verifies and renders as before, naming none."""
    def as_an_earlier_release(run: AuditRun, findings: Any, keyring: Any, **named: Any) -> None:
        run.summary = {k: v for k, v in run.summary.items() if k != "constitution_versions"}
        sign_close(run, findings, keyring, **named)

    monkeypatch.setattr(audit_close, "sign_close", as_an_earlier_release)
    run = _audited(db_session, keyring)
    monkeypatch.undo()
    report = _report(db_session, run, keyring)
    assert "constitution_versions" not in report["run"]["summary"] and report["run"]["summary"] == run.summary
    assert report_view(db_session, run_id=run.id, keyring=keyring).figures["constitution_versions"] is None
