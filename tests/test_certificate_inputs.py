"""Review of certification: what the certificate signs, the duplicate gate's inputs, the numbers.

Each test proves a defect found in review (fixed, or marked xfail until it is), or pins down
behaviour the review checked and found sound.
"""

import dataclasses
import threading

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from models.certificates import verify_certificate
from models.certification import certify_skill
from models.chain import history
from models.entities import EntityType, Skill
from models.errors import EntityTampered
from models.registry import create_entity, update_entity
from tests.conftest import wait_for
from tests.test_certification import GOOD, _certified, _industry, _skill

API = "/api/v1"
OTHER = "Negotiates supplier contracts and tracks procurement spend for the finance office every quarter"


def _job(write_ctx, name: str):
    return dataclasses.replace(write_ctx, actor=f"job:{name}")


# --- what a certificate signs ------------------------------------------------------------


def test_a_certificate_takes_no_industry_code_from_a_row_edited_through_sql(db_session, write_ctx, steward) -> None:
    """The certificate id names the industry's code, read from its row: a code edited
    through SQL was signed into the certificate and the skill's chain (SKILL-EVIL-001), a
    value no signed version of the industry ever held."""
    industry = _industry(db_session, write_ctx, steward, "FIN")
    skill = _skill(db_session, write_ctx, steward, "Pipeline Engineering", industry=industry)
    db_session.execute(text("UPDATE industries SET code = 'EVIL' WHERE id = :id"), {"id": industry.id})
    db_session.expire_all()
    with pytest.raises(EntityTampered) as refused:
        certify_skill(db_session, skill_id=skill.id, notes=None, ctx=write_ctx)
    assert refused.value.extensions["id"] == str(industry.id)
    assert [v.version for v in history(db_session, entity_id=skill.id)] == [1]  # nothing signed
    assert db_session.scalar(text("SELECT count(*) FROM certificate_sequences")) == 0


def test_a_certificate_names_the_industry_code_its_signed_head_holds(db_session, write_ctx, steward) -> None:
    industry = _industry(db_session, write_ctx, steward, "FIN")
    update_entity(db_session, entity_type=EntityType.INDUSTRY, entity_id=industry.id, changes={"code": "BNK"}, ctx=write_ctx)
    skill = _skill(db_session, write_ctx, steward, "Pipeline Engineering", industry=industry)
    cert = certify_skill(db_session, skill_id=skill.id, notes=None, ctx=write_ctx).certificate
    assert cert["certificate_id"] == "SKILL-BNK-001"


@pytest.mark.parametrize("malformed", [
    None, [], "SKILL-GEN-001", 7,
    {"certified_version": 2**64}, {"certified_version": float("nan")}, {"certificate_id": "\ud800"},
    {"issued_at": {"nested": ["x"]}}, {"kid": None}, {"signature": 12},
], ids=repr)
def test_verify_certificate_answers_false_for_a_malformed_certificate(db_session, write_ctx, steward, keyring, malformed) -> None:
    """A certificate handed in for checking (read from a file, say) is untrusted input: the
    check answered AttributeError for a non-object and CanonicalizationError for a member
    canonical JSON cannot hold, rather than False."""
    skill = _skill(db_session, write_ctx, steward, "Pipeline Engineering")
    cert = certify_skill(db_session, skill_id=skill.id, notes=None, ctx=write_ctx).certificate
    candidate = {**cert, **malformed} if isinstance(malformed, dict) else malformed
    assert verify_certificate(candidate, skill_id=skill.id, keyring=keyring) is False
    assert verify_certificate(cert, skill_id=skill.id, keyring=keyring) is True


# --- the duplicate gate's inputs -----------------------------------------------------------


def test_a_certified_skills_vector_zeroed_through_sql_rejects_no_other_skill(db_session, write_ctx, steward) -> None:
    """pgvector's cosine distance to a zero vector is NaN, and ``1 - NaN < 0.95`` is false:
    with that skill the nearest certified one, every skill was rejected as its near-duplicate
    'with similarity NaN' (a result JSON cannot carry). A nulled vector is skipped (the audit
    reports it, embedding-mismatch); a zeroed one must be too."""
    original = _certified(db_session, write_ctx, steward, "Pipeline Engineering")
    db_session.execute(text("UPDATE skills SET embedding = array_fill(0, ARRAY[384])::vector WHERE id = :id"),
                       {"id": original.id})
    db_session.expire_all()
    unrelated = _skill(db_session, write_ctx, steward, "Procurement", description=OTHER)
    outcome = certify_skill(db_session, skill_id=unrelated.id, notes=None, ctx=_job(write_ctx, "unrelated"))
    assert outcome.status == "certified", outcome.as_json()


def test_a_draft_set_to_certified_through_sql_gets_no_honest_skill_rejected(db_session, write_ctx, steward) -> None:
    """The gate read other skills' status from their rows, unchecked: a draft set to
    'certified' through SQL made Plant sign a rejection of an honest skill, naming as its
    'certified' duplicate a skill no signed version certified. The audit, which confirms a
    partner from its signed head, would never accuse that pair; the gate must not either."""
    draft = _skill(db_session, write_ctx, steward, "Fraud Detection")
    db_session.execute(text("UPDATE skills SET status = 'certified' WHERE id = :id"), {"id": draft.id})
    db_session.expire_all()
    honest = _skill(db_session, write_ctx, steward, "Fraud Detection Copy")
    outcome = certify_skill(db_session, skill_id=honest.id, notes=None, ctx=_job(write_ctx, "honest"))
    assert outcome.status == "certified", outcome.as_json()


def test_a_certified_skills_vector_made_to_look_like_a_draft_gets_it_no_rejection(db_session, write_ctx, steward) -> None:
    """The stored vector is not signed: copied through SQL from a draft onto an unrelated
    certified skill, it made the gate reject that draft as a near-duplicate (similarity 1.0)
    of a skill whose signed text is nothing like it."""
    unrelated = _certified(db_session, write_ctx, steward, "Procurement", description=OTHER)
    draft = _skill(db_session, write_ctx, steward, "Pipeline Engineering")
    db_session.execute(text("UPDATE skills SET embedding = (SELECT embedding FROM skills WHERE id = :d) WHERE id = :u"),
                       {"d": draft.id, "u": unrelated.id})
    db_session.expire_all()
    outcome = certify_skill(db_session, skill_id=draft.id, notes=None, ctx=_job(write_ctx, "draft"))
    assert outcome.status == "certified", outcome.as_json()


def test_a_real_near_duplicate_is_still_rejected_naming_its_signed_original(db_session, write_ctx, steward) -> None:
    original = _certified(db_session, write_ctx, steward, "Fraud Detection")
    copy = _skill(db_session, write_ctx, steward, "Fraud Detection Copy")
    outcome = certify_skill(db_session, skill_id=copy.id, notes=None, ctx=_job(write_ctx, "copy"))
    assert outcome.status == "rejected"
    assert outcome.blocking_duplicate["id"] == str(original.id) and outcome.blocking_duplicate["similarity"] >= 0.95


def test_skills_named_in_symbols_alone_are_not_near_duplicates_of_each_other(db_session, write_ctx, steward) -> None:
    lock, chart = (create_entity(db_session, entity_type=EntityType.SKILL, ctx=write_ctx, data={
        "name": symbol, "skill_key": key, "category": "technical", "description": " ".join([symbol] * 8),
        "governance_agent_id": steward}) for symbol, key in (("\U0001f510", "lock"), ("\U0001f4c8", "chart")))
    assert certify_skill(db_session, skill_id=lock.id, notes=None, ctx=_job(write_ctx, "lock")).status == "certified"
    outcome = certify_skill(db_session, skill_id=chart.id, notes=None, ctx=_job(write_ctx, "chart"))
    assert outcome.status == "certified", outcome.as_json()


def test_a_certificate_is_dated_by_the_database_clock_not_the_worker_s(db_session, write_ctx, steward, monkeypatch) -> None:
    """issued_at came from the worker's clock, and the audit tells which of a near-duplicate pair
    was certified later by it: two workers' skew could accuse the wrong skill. It is the
    database's clock, read under the certification lock."""
    import datetime as dt
    from types import SimpleNamespace

    from sqlalchemy import func, select

    from models import certificates

    class Skewed(dt.datetime):
        @classmethod
        def now(cls, tz=None):  # a worker whose clock is a year behind
            return dt.datetime(2001, 1, 1, tzinfo=tz)

    monkeypatch.setattr(certificates, "dt", SimpleNamespace(datetime=Skewed, UTC=dt.UTC))
    skill = create_entity(db_session, entity_type=EntityType.SKILL, ctx=write_ctx, data={
        "name": "Clock Reading", "skill_key": "clock", "category": "technical", "description": OTHER,
        "governance_agent_id": steward})
    before = db_session.scalar(select(func.clock_timestamp()))
    outcome = certify_skill(db_session, skill_id=skill.id, notes=None, ctx=_job(write_ctx, "clock"))
    after = db_session.scalar(select(func.clock_timestamp()))
    assert outcome.status == "certified"
    issued = dt.datetime.fromisoformat(db_session.get(Skill, skill.id).certificate["issued_at"])
    assert before <= issued <= after, (before, issued, after)


# --- certificate numbers -------------------------------------------------------------------


@pytest.mark.parametrize("edit", ["UPDATE certificate_sequences SET last_number = 0", "DELETE FROM certificate_sequences"])
def test_a_counter_set_back_through_sql_never_issues_a_certificate_id_twice(db_session, write_ctx, steward,
                                                                           edit) -> None:
    """certificate_sequences has no guard: a counter set back (or deleted) through SQL made
    Plant sign a second SKILL-GEN-001, unseen by the audit (helper-140). The next number is
    now also after the highest the skills' certificates hold."""
    first = _certified(db_session, write_ctx, steward, "Pipeline Engineering")
    db_session.execute(text(edit))
    second = _certified(db_session, write_ctx, steward, "Procurement", description=OTHER)
    db_session.expire_all()
    ids = [db_session.get(Skill, s.id).certificate["certificate_id"] for s in (first, second)]
    assert ids == ["SKILL-GEN-001", "SKILL-GEN-002"], ids


# --- checked and found sound ---------------------------------------------------------------


def test_a_patch_racing_a_certification_is_the_version_the_certificate_names(engine, write_ctx, committed_steward) -> None:
    """A PATCH in flight holds the row: the certification waits, then judges and names the
    patched version (its link), and the certified version is the one after it."""
    from models.db import make_session_factory, transaction

    sessions = make_session_factory(engine)
    with transaction(sessions) as session:
        skill_id = _skill(session, write_ctx, committed_steward, "Short Skill", description="too short").id
    patching = sessions()
    outcome: dict = {}
    try:
        update_entity(patching, entity_type=EntityType.SKILL, entity_id=skill_id, changes={"description": GOOD}, ctx=write_ctx)
        patching.flush()

        def certify() -> None:
            with transaction(sessions) as session:
                outcome["result"] = certify_skill(session, skill_id=skill_id, notes=None, ctx=_job(write_ctx, "race")).as_json()

        worker = threading.Thread(target=certify)
        worker.start()
        worker.join(timeout=1.0)
        assert worker.is_alive(), "the certification judged the skill while a PATCH of it was uncommitted"
        patching.commit()
        worker.join(timeout=30)
    finally:
        patching.close()
    result = outcome["result"]
    assert result["status"] == "certified" and result["version"] == 3
    with sessions() as session:
        versions = history(session, entity_id=skill_id)
    assert result["certificate"]["certified_version"] == 2
    assert result["certificate"]["certified_link_hash"] == bytes(versions[1].link_hash).hex()


def _finished(client, response) -> dict:
    assert response.status_code == 202, response.get_json()
    url = response.headers["Location"]
    return wait_for(lambda: (j := client.get(url, query_string={"wait": 5}).get_json())["status"]
                    in ("succeeded", "failed", "cancelled") and j, timeout=60, what=f"job {url}")


@pytest.mark.usefixtures("worker")
def test_near_duplicates_certified_by_two_worker_jobs_at_once_certify_exactly_one(client, engine, write_ctx, committed_steward) -> None:
    with Session(engine) as session, session.begin():
        ids = [str(_skill(session, write_ctx, committed_steward, name).id) for name in ("Fraud Detection", "Fraud Detection Copy")]
    started = [client.post(f"{API}/genesis/skills/{skill_id}/certify", json={}) for skill_id in ids]
    jobs = [_finished(client, response) for response in started]
    assert [job["status"] for job in jobs] == ["succeeded", "succeeded"], jobs
    assert sorted(job["result"]["status"] for job in jobs) == ["certified", "rejected"]
    certified = next(job for job in jobs if job["result"]["status"] == "certified")
    rejected = next(job for job in jobs if job["result"]["status"] == "rejected")
    assert rejected["result"]["blocking_duplicate"]["id"] == certified["result"]["skill_id"]
    assert certified["result"]["certificate"]["certificate_id"] == "SKILL-GEN-001"


def test_a_copy_of_a_certified_skill_whose_row_was_edited_through_sql_is_still_rejected(db_session, write_ctx, steward) -> None:
    """Confirmed from its signed head version, not its row: an original whose row was edited
    outside Plant (its tags, here) is still certified by its chain, and still blocks a copy."""
    original = _certified(db_session, write_ctx, steward, "Fraud Detection")
    db_session.execute(text("UPDATE skills SET tags = ARRAY['edited'] WHERE id = :id"), {"id": original.id})
    db_session.expire_all()
    copy = _skill(db_session, write_ctx, steward, "Fraud Detection Copy")
    outcome = certify_skill(db_session, skill_id=copy.id, notes=None, ctx=_job(write_ctx, "copy"))
    assert outcome.status == "rejected", outcome.as_json()
    assert outcome.blocking_duplicate["id"] == str(original.id)
