"""An audit run's entity counters add up, whatever kind of run it is.

``total_entities == compliant + non_compliant``, none negative, for full, scoped and
incremental runs, with a digest naming entities the run did or did not audit; a team's
members are counted by the incremental audit as by the full one (rule TEAM-01).
"""

import pytest
from sqlalchemy import select, text

from models.entities import EntityType
from models.ledger_store import store_digest
from models.registry import create_entity, update_entity
from tests.test_audit import digest_of, run_audit, run_incremental, tamper_delete_newest
from tests.conftest import EMBEDDER

E = EntityType


def assert_counts_add_up(summary: dict) -> None:
    counts = (summary["total_entities"], summary["compliant"], summary["non_compliant"])
    assert min(counts) >= 0 and counts[0] == counts[1] + counts[2], counts


def test_an_incremental_run_counts_a_rolled_back_entity(db_session, skill, keyring) -> None:
    store_digest(db_session, keyring=keyring)
    tamper_delete_newest(db_session, skill, keyring)
    summary, findings = run_incremental(db_session, keyring)
    assert [f.code for f in findings] == ["head-rolled-back"]
    assert_counts_add_up(summary)
    assert (summary["total_entities"], summary["non_compliant"]) == (1, 1)


def _team_with_a_member(session, write_ctx, steward):
    industry = create_entity(session, entity_type=E.INDUSTRY, ctx=write_ctx, data={
        "name": "Counted Industry", "code": "CNTD", "governance_agent_id": steward})
    skill_ = create_entity(session, entity_type=E.SKILL, ctx=write_ctx, data={
        "name": "Counted Skill", "skill_key": "counted-skill", "category": "technical", "description": "d",
        "governance_agent_id": steward})
    role = create_entity(session, entity_type=E.JOB_ROLE, ctx=write_ctx, data={
        "name": "Counter", "seniority": "mid", "required_skill_ids": [skill_.id], "governance_agent_id": steward})
    team = create_entity(session, entity_type=E.TEAM, ctx=write_ctx, data={
        "name": "Counted Team", "job_role_id": role.id, "capacity": 3, "governance_agent_id": steward})
    create_entity(session, entity_type=E.AGENT, ctx=write_ctx, data={
        "name": "Member", "job_role_id": role.id, "industry_id": industry.id, "skill_ids": [skill_.id],
        "team_id": team.id, "governance_agent_id": steward})
    session.flush()
    return team


def test_an_incremental_run_counts_a_team_s_members(db_session, write_ctx, steward, keyring) -> None:
    team = _team_with_a_member(db_session, write_ctx, steward)
    _, full = run_audit(db_session, keyring)
    assert not [f for f in full if f.rule_id == "TEAM-01"]
    store_digest(db_session, keyring=keyring)
    update_entity(db_session, entity_type=E.TEAM, entity_id=team.id, changes={"description": "changed"}, ctx=write_ctx)
    summary, findings = run_incremental(db_session, keyring)
    assert summary["total_entities"] == 2 and findings == []  # the team and its member, whose seat rules read it


def test_a_memberless_team_still_gets_its_team_01_warning_incrementally(db_session, write_ctx, steward, keyring) -> None:
    team = _team_with_a_member(db_session, write_ctx, steward)
    store_digest(db_session, keyring=keyring)
    db_session.execute(text("UPDATE agents SET team_id = NULL WHERE team_id = :t"), {"t": team.id})
    update_entity(db_session, entity_type=E.TEAM, entity_id=team.id, changes={"description": "changed"}, ctx=write_ctx)
    _, findings = run_incremental(db_session, keyring)
    assert [(f.entity_id, f.rule_id) for f in findings] == [(team.id, "TEAM-01")]


SCOPES = {
    "whole registry": ({}, True),
    "the tampered skill's type": ({"scope": {"entity_type": "skill"}}, True),
    "another type": ({"scope": {"entity_type": "industry"}}, False),
    "the tampered skill by id": ({"scope": {"entity_ids": ["SKILL"]}}, True),
    "another entity by id": ({"scope": {"entity_ids": ["STEWARD"]}}, False),
}


@pytest.mark.parametrize("name", list(SCOPES))
def test_a_scoped_run_reports_and_counts_only_its_scope(db_session, skill, steward, keyring, name) -> None:
    params, sees_the_skill = SCOPES[name]
    if "scope" in params and "entity_ids" in params["scope"]:
        params = {"scope": {"entity_ids": [str(skill.id) if params["scope"]["entity_ids"] == ["SKILL"] else str(steward)]}}
    digest = digest_of(db_session, keyring, with_leaves=True)
    tamper_delete_newest(db_session, skill, keyring)
    summary, findings = run_audit(db_session, keyring, {**params, "against_digest": digest})
    assert_counts_add_up(summary)
    rolled_back = [f.entity_id for f in findings if f.code == "head-rolled-back"]
    assert rolled_back == ([skill.id] if sees_the_skill else [])
    assert summary["non_compliant"] == (1 if sees_the_skill else 0)
    assert summary["coverage"]["mode"] == "full"


def test_a_type_scoped_run_leaves_out_a_deleted_entity_of_another_type(db_session, skill, keyring) -> None:
    digest = digest_of(db_session, keyring, with_leaves=True)
    db_session.execute(text("UPDATE skills SET deleted_at = now() WHERE id = :id"), {"id": skill.id})
    _, in_scope = run_audit(db_session, keyring, {"scope": {"entity_type": "skill"}, "against_digest": digest})
    _, out_of_scope = run_audit(db_session, keyring, {"scope": {"entity_type": "industry"}, "against_digest": digest})
    assert "entity-deleted" in {f.code for f in in_scope if f.entity_id == skill.id}
    assert [f.code for f in out_of_scope] == []


def test_counts_add_up_after_every_kind_of_run(db_session, skill, write_ctx, keyring) -> None:
    store_digest(db_session, keyring=keyring)
    update_entity(db_session, entity_type=E.SKILL, entity_id=skill.id, changes={"description": "version four"},
                  ctx=write_ctx)
    db_session.execute(text("UPDATE skills SET governance_agent_id = NULL WHERE id = :id"), {"id": skill.id})
    for params in ({"since": "latest-digest"}, {"verify_signatures": "all"}, {"scope": {"entity_type": "skill"}},
                   {"scope": {"entity_ids": [str(skill.id)]}}):
        summary, _ = run_audit(db_session, keyring, params)
        assert_counts_add_up(summary)
        assert summary["non_compliant"] == 1, params



def test_a_run_that_stopped_part_way_counts_only_the_entities_it_audited(db_session, write_ctx, steward, keyring) -> None:
    """A digest's findings are written for the whole scope when the run is planned; a run
    that ends failed or cancelled part-way must not count the entities it never reached as
    non-compliant (compliant went negative) nor claim to have read them."""
    from models.audit_chunks import audit_chunk_step, pending_chunks
    from models.audit_close import summarize_run
    from models.audit_runs import start_run
    from models.audit_tables import AuditChunk, AuditFinding
    from models.entities import Skill
    from models.job_lifecycle import create_job

    skills = []
    for n in range(12):
        skill = create_entity(db_session, entity_type=EntityType.SKILL, ctx=write_ctx, data={
            "name": f"Skill {n}", "skill_key": f"skill-{n}", "category": "technical",
            "description": "version one", "governance_agent_id": steward})
        for text_ in ("version two", "version three"):
            update_entity(db_session, entity_type=EntityType.SKILL, entity_id=skill.id, changes={"description": text_}, ctx=write_ctx)
        skills.append(skill)
    db_session.flush()
    digest = digest_of(db_session, keyring, with_leaves=True)
    for skill in skills:
        tamper_delete_newest(db_session, skill, keyring)  # every skill rolled back since the digest
    job = create_job(db_session, kind="audit.run", queue="audit",
                     params={"scope": {"entity_type": "skill"}, "against_digest": digest})
    run = start_run(db_session, job_id=job.id, params=job.params, keyring=keyring, embedder=EMBEDDER, chunk_entities=3)
    rolled_back = {f.entity_id for f in db_session.query(AuditFinding).filter_by(run_id=run.id, code="head-rolled-back")}
    assert rolled_back == {s.id for s in skills}  # the digest's findings name every one, before any is audited
    # One chunk audited to its end, another stopped at its first checkpoint (chunk bounds
    # are fixed slices of the id space; the ids are random, so pick two that hold skills).
    all_ids = sorted(db_session.scalars(select(Skill.id)))
    chunks = [db_session.get(AuditChunk, c) for c in pending_chunks(db_session, run.id)]
    holding = [(c, [i for i in all_ids if c.low_id <= i <= c.high_id]) for c in chunks]
    (done, done_ids), (stopped, stopped_ids) = [(c, ids) for c, ids in holding if ids][:2]
    while not audit_chunk_step(db_session, chunk_id=done.id, keyring=keyring, embedder=EMBEDDER, batch_size=2).done:
        pass
    assert not audit_chunk_step(db_session, chunk_id=stopped.id, keyring=keyring, embedder=EMBEDDER, batch_size=1).done
    audited = {*done_ids, stopped_ids[0]}
    summary = summarize_run(db_session, keyring=keyring, run_id=run.id, status="failed")
    assert_counts_add_up(summary)
    assert summary["total_entities"] == len(audited) < run.entities_total
    assert summary["non_compliant"] == len(audited & rolled_back)  # not every rolled-back skill: compliant went negative
    assert summary["compliant"] == len(audited - rolled_back)
    assert (f"ended failed after auditing {len(audited)} of the {run.entities_total} entities"
            in summary["coverage"]["stopped"])
