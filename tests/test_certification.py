"""Skill certification against the real database: gates, numbering, idempotency."""

import dataclasses
import json
import math
import threading
import uuid

import pytest
from sqlalchemy import text

from models.certificates import verify_certificate
from models.certification import certify_skill
from models.errors import AlreadyCertified, ImmutableEntity, NotCertifiable
from models.chain import history
from models.chain_verification import verify_entity
from models.entities import EntityType, Skill
from models.registry import create_entity, update_entity
from tests.conftest import EMBEDDER, ring_sealing

GOOD = "Designs, reviews and maintains reliable data pipelines for analytics teams every day"


def _industry(session, ctx, steward, code="CRT"):
    return create_entity(session, entity_type=EntityType.INDUSTRY, ctx=ctx,
                         data={"name": f"Industry {code}", "code": code, "governance_agent_id": steward})


def _skill(session, ctx, steward, name, description=GOOD, industry=None):
    return create_entity(session, entity_type=EntityType.SKILL, ctx=ctx, data={
        "name": name, "skill_key": name.lower().replace(" ", "-"), "category": "technical",
        "description": description, "industry_id": industry.id if industry else None, "governance_agent_id": steward})


def _certified(session, ctx, steward, name, **fields):
    skill = _skill(session, ctx, steward, name, **fields)
    assert certify_skill(session, skill_id=skill.id, notes=None, ctx=ctx).status == "certified"
    return skill


def _retire(session, ctx, skill_id):
    return update_entity(session, entity_type=EntityType.SKILL, entity_id=skill_id, changes={"status": "retired"}, ctx=ctx)


def _certify_while_hidden(session, ctx, copy, original) -> None:
    """Certify ``copy`` while ``original`` is set to draft through SQL, then put it back: the
    gate saw no certified original, and the rows hold nothing of it."""
    session.execute(text("UPDATE skills SET status = 'draft' WHERE id = :id"), {"id": original.id})
    assert certify_skill(session, skill_id=copy.id, notes=None, ctx=ctx).status == "certified"
    session.execute(text("UPDATE skills SET status = 'certified' WHERE id = :id"), {"id": original.id})


def test_a_good_skill_is_certified_with_a_signed_certificate(db_session, write_ctx, steward, keyring) -> None:
    industry = _industry(db_session, write_ctx, steward)
    skill = _skill(db_session, write_ctx, steward, "Pipeline Engineering", industry=industry)
    certified_link = bytes(skill.head_link_hash)
    outcome = certify_skill(db_session, skill_id=skill.id, notes="checked by QA", ctx=write_ctx)
    assert outcome.status == "certified" and outcome.version == 2
    cert = outcome.certificate
    assert cert["certificate_id"] == "SKILL-CRT-001"
    assert cert["kid"] == keyring.active.kid and cert["certified_link_hash"] == certified_link.hex()
    assert cert["format"] == "plant.skill-certificate.v1" and cert["certified_version"] == 1
    assert verify_certificate(cert, skill_id=skill.id, keyring=keyring)
    assert verify_entity(db_session, entity=skill, keyring=keyring).ok
    assert skill.governance_notes == "checked by QA"


def test_numbers_are_per_industry_and_gen_without_one(db_session, write_ctx, steward) -> None:
    a, b = _industry(db_session, write_ctx, steward, "AAA"), _industry(db_session, write_ctx, steward, "BBB")
    ids = []
    for name, industry in [("Skill One", a), ("Skill Two Data", b), ("Skill Three Ops", a), ("Skill Four Free", None)]:
        skill = _skill(db_session, write_ctx, steward, name, description=f"{name} " + GOOD.replace("pipelines", name.split()[-1]), industry=industry)
        ids.append(certify_skill(db_session, skill_id=skill.id, notes=None, ctx=write_ctx).certificate)
    assert [c["certificate_id"] if c else None for c in ids][:1] == ["SKILL-AAA-001"]
    numbers = sorted(c["certificate_id"] for c in ids if c)
    assert "SKILL-BBB-001" in numbers and "SKILL-AAA-002" in numbers and "SKILL-GEN-001" in numbers


def test_failing_gates_reject_and_list_every_failure(db_session, write_ctx, steward) -> None:
    original = _skill(db_session, write_ctx, steward, "Fraud Detection", description=GOOD)
    certify_skill(db_session, skill_id=original.id, notes=None, ctx=write_ctx)
    # The same text under another name: a near-duplicate (cosine 0.98 with the hashing embedder).
    copy = _skill(db_session, write_ctx, steward, "Fraud Detection Copy", description=GOOD)
    # Its (unsigned) embedding column cleared through SQL, which would dodge the gate: it is recomputed.
    db_session.execute(text("UPDATE skills SET embedding = NULL WHERE id = :id"), {"id": copy.id})
    db_session.expire_all()
    outcome = certify_skill(db_session, skill_id=copy.id, notes=None, ctx=write_ctx)
    assert outcome.status == "rejected" and outcome.certificate is None
    assert {g["gate"] for g in outcome.failed_gates} == {"near-duplicate"}
    assert outcome.blocking_duplicate["id"] == str(original.id)
    assert [v.version for v in history(db_session, entity_id=copy.id)] == [1, 2]
    short = _skill(db_session, write_ctx, steward, "Short Skill", description="Too short")
    failed = certify_skill(db_session, skill_id=short.id, notes=None, ctx=write_ctx).failed_gates
    assert {g["gate"] for g in failed} == {"description-length"}


def test_a_rejected_skill_can_be_fixed_and_certified(db_session, write_ctx, steward) -> None:
    skill = _skill(db_session, write_ctx, steward, "Short Skill", description="short")
    assert certify_skill(db_session, skill_id=skill.id, notes=None, ctx=write_ctx).status == "rejected"
    update_entity(db_session, entity_type=EntityType.SKILL, entity_id=skill.id, changes={"description": GOOD + " quickly"}, ctx=write_ctx)
    assert certify_skill(db_session, skill_id=skill.id, notes=None, ctx=dataclasses.replace(write_ctx, actor="job:2")).status == "certified"


def test_certified_is_immutable_and_not_certified_twice(db_session, write_ctx, steward) -> None:
    skill = _skill(db_session, write_ctx, steward, "Immutable Skill")
    certify_skill(db_session, skill_id=skill.id, notes=None, ctx=write_ctx)
    with pytest.raises(ImmutableEntity):
        update_entity(db_session, entity_type=EntityType.SKILL, entity_id=skill.id, changes={"name": "x"}, ctx=write_ctx)
    with pytest.raises(AlreadyCertified):
        certify_skill(db_session, skill_id=skill.id, notes=None, ctx=dataclasses.replace(write_ctx, actor="job:other"))


@pytest.mark.parametrize("retired_between", [False, True])
def test_a_retried_job_gets_its_first_outcome_back(db_session, write_ctx, steward, retired_between) -> None:
    """Also when the skill was retired before the retry: the outcome is found in the chain."""
    skill = _skill(db_session, write_ctx, steward, "Retried Skill")
    ctx = dataclasses.replace(write_ctx, actor=f"job:{uuid.uuid4()}")
    first = certify_skill(db_session, skill_id=skill.id, notes=None, ctx=ctx)
    if retired_between:
        _retire(db_session, write_ctx, skill.id)
    again = certify_skill(db_session, skill_id=skill.id, notes=None, ctx=ctx)
    assert again.status == "certified" and again.certificate == first.certificate and again.version == first.version == 2
    assert len(history(db_session, entity_id=skill.id)) == (3 if retired_between else 2)


def test_certification_notes_are_stored_as_they_are_signed_in_nfc(db_session, write_ctx, steward) -> None:
    """The row held the notes as sent (NFD) while the signed head held them NFC: the API served
    a value differing from the history byte for byte (helper-65)."""
    skill = _skill(db_session, write_ctx, steward, "Notes Skill")
    certify_skill(db_session, skill_id=skill.id, notes="Cafe\u0301 review", ctx=write_ctx)
    head = json.loads(history(db_session, entity_id=skill.id)[-1].content)
    stored = db_session.scalar(text("SELECT governance_notes FROM skills WHERE id = :id"), {"id": skill.id})
    assert stored == head["governance_notes"] == "Caf\u00e9 review"


def test_retired_skill_is_not_certifiable(db_session, write_ctx, steward) -> None:
    skill = _skill(db_session, write_ctx, steward, "Old Skill")
    update_entity(db_session, entity_type=EntityType.SKILL, entity_id=skill.id, changes={"status": "retired"}, ctx=write_ctx)
    with pytest.raises(NotCertifiable) as refused:
        certify_skill(db_session, skill_id=skill.id, notes=None, ctx=write_ctx)
    # Stored as the job's error: a "status" member there must be the HTTP status, a number
    # (a string one made the job, and every page listing it, a 500).
    problem = refused.value.problem()
    assert problem["skill_status"] == "retired" and "status" not in problem


def test_concurrent_certifications_get_gap_free_unique_numbers(engine, write_ctx, committed_steward) -> None:
    from models.db import make_session_factory, transaction

    sessions = make_session_factory(engine)
    with transaction(sessions) as session:
        industry = _industry(session, write_ctx, committed_steward, "PAR")
        skill_ids = [
            _skill(session, write_ctx, committed_steward, f"Parallel {word}", description=f"{word} " + GOOD, industry=industry).id
            for word in ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]
        ]
    barrier, errors = threading.Barrier(len(skill_ids)), []

    def certify(skill_id):
        barrier.wait()
        try:
            with transaction(sessions) as session:
                certify_skill(session, skill_id=skill_id, notes=None, ctx=write_ctx)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=certify, args=(s,)) for s in skill_ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with sessions() as session:
        ids = sorted(session.get(Skill, s).certificate["certificate_id"] for s in skill_ids)
        assert ids == [f"SKILL-PAR-{n:03d}" for n in range(1, 9)]
        assert session.execute(text("SELECT last_number FROM certificate_sequences WHERE industry_code = 'PAR'")).scalar() == 8


def test_racing_certifications_of_one_skill_issue_exactly_one_certificate(engine, write_ctx, committed_steward) -> None:
    from models.db import make_session_factory, transaction

    sessions = make_session_factory(engine)
    with transaction(sessions) as session:
        skill_id = _skill(session, write_ctx, committed_steward, "Contested Skill").id
    barrier, outcomes = threading.Barrier(8), []

    def certify(n: int) -> None:
        barrier.wait()
        try:
            with transaction(sessions) as session:
                certify_skill(session, skill_id=skill_id, notes=None, ctx=dataclasses.replace(write_ctx, actor=f"job:{n}"))
            outcomes.append("certified")
        except AlreadyCertified:
            outcomes.append("already")

    threads = [threading.Thread(target=certify, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["already"] * 7 + ["certified"]
    with sessions() as session:
        assert session.execute(text("SELECT count(*) FROM certificate_sequences")).scalar() == 1
        assert session.execute(text("SELECT last_number FROM certificate_sequences")).scalar() == 1


# A row edited outside Plant must never be signed into a new version: that would turn the
# tampering into valid history, and certification would judge content nobody signed.


def _edit_through_sql(session, skill, **columns) -> None:
    assignments = ", ".join(f"{c} = :{c}" for c in columns)
    session.execute(text(f"UPDATE skills SET {assignments} WHERE id = :id"), {**columns, "id": skill.id})
    session.expire_all()


def test_certification_refuses_a_skill_whose_row_was_edited_through_sql(db_session, write_ctx, steward, keyring) -> None:
    from models.audit import check_entity
    from models.errors import EntityTampered

    skill = _skill(db_session, write_ctx, steward, "Short Skill", description="too short")
    _edit_through_sql(db_session, skill, description=GOOD)  # would pass the length gate
    with pytest.raises(EntityTampered) as refused:
        certify_skill(db_session, skill_id=skill.id, notes=None, ctx=write_ctx)
    assert refused.value.extensions["finding"] == "row-content-mismatch"
    assert [v.version for v in history(db_session, entity_id=skill.id)] == [1]  # nothing signed
    assert [f.code for f in check_entity(db_session, entity_id=skill.id, keyring=keyring, embedder=EMBEDDER).findings] == ["row-content-mismatch"]


@pytest.mark.parametrize("tamper", ["content", "head"])
def test_a_write_on_top_of_a_tampered_row_is_refused_and_the_evidence_stays(db_session, write_ctx, steward, keyring, tamper) -> None:
    from models.audit import check_entity
    from models.errors import EntityTampered

    skill = _skill(db_session, write_ctx, steward, "Some Skill")
    update_entity(db_session, entity_type=EntityType.SKILL, entity_id=skill.id, changes={"tags": ["a"]}, ctx=write_ctx)
    if tamper == "content":
        _edit_through_sql(db_session, skill, governance_notes="approved by the board")
    else:  # the row pointed back at version 1, as if version 2 had never been written
        v1 = history(db_session, entity_id=skill.id)[0]
        _edit_through_sql(db_session, skill, version=1, head_link_hash=bytes(v1.link_hash), tags=[])
    before = check_entity(db_session, entity_id=skill.id, keyring=keyring, embedder=EMBEDDER).findings
    with pytest.raises(EntityTampered):
        update_entity(db_session, entity_type=EntityType.SKILL, entity_id=skill.id, changes={"tags": ["b"]}, ctx=write_ctx)
    assert [v.version for v in history(db_session, entity_id=skill.id)] == [1, 2]
    assert check_entity(db_session, entity_id=skill.id, keyring=keyring, embedder=EMBEDDER).findings == before != []


def _b64(raw: bytes) -> str:
    from models.jws import b64url_encode

    return b64url_encode(raw)


def test_a_certificate_verifies_only_as_issued_for_its_skill(db_session, write_ctx, steward, keyring) -> None:
    skill = _skill(db_session, write_ctx, steward, "Pipeline Engineering")
    other = _skill(db_session, write_ctx, steward, "Other Skill", description="too short")
    cert = certify_skill(db_session, skill_id=skill.id, notes=None, ctx=write_ctx).certificate
    assert verify_certificate(cert, skill_id=skill.id, keyring=keyring)
    assert not verify_certificate(cert, skill_id=other.id, keyring=keyring)
    assert not verify_certificate({**cert, "scope": "all skills"}, skill_id=skill.id, keyring=keyring)  # unsigned member
    assert not verify_certificate({**cert, "signature": cert["signature"] + "=="}, skill_id=skill.id, keyring=keyring)
    for field, value in [("certificate_id", "SKILL-GEN-999"), ("issued_at", "2020-01-01T00:00:00Z"),
                         ("certified_version", 2), ("certified_link_hash", "00" * 32), ("format", "other")]:
        assert not verify_certificate({**cert, field: value}, skill_id=skill.id, keyring=keyring), field
    # A version's chain signature is no certificate: forging one for a rejected skill fails.
    assert certify_skill(db_session, skill_id=other.id, notes=None, ctx=write_ctx).status == "rejected"
    v1 = history(db_session, entity_id=other.id)[0]
    assert cert["signature"] != _b64(bytes(history(db_session, entity_id=skill.id)[0].signature))
    forged = {**cert, "kid": v1.kid, "signature": _b64(bytes(v1.signature)), "certified_link_hash": bytes(v1.link_hash).hex()}
    assert not verify_certificate(forged, skill_id=other.id, keyring=keyring)


def test_a_certificate_its_key_signed_after_the_key_was_sealed_does_not_verify(db_session, write_ctx, steward, keyring) -> None:
    skill = _skill(db_session, write_ctx, steward, "Pipeline Engineering")
    cert = certify_skill(db_session, skill_id=skill.id, notes=None, ctx=write_ctx).certificate
    assert verify_certificate(cert, skill_id=skill.id, keyring=ring_sealing(keyring, "2999-01-01T00:00:00Z"))
    assert not verify_certificate(cert, skill_id=skill.id, keyring=ring_sealing(keyring, cert["issued_at"]))
    assert not verify_certificate(cert, skill_id=skill.id, keyring=ring_sealing(keyring, "2020-01-01T00:00:00Z"))


def test_near_duplicates_certified_side_by_side_cannot_both_pass(engine, write_ctx, committed_steward) -> None:
    from models.db import make_session_factory, transaction

    sessions = make_session_factory(engine)
    with transaction(sessions) as session:
        a = _skill(session, write_ctx, committed_steward, "Fraud Detection", industry=_industry(session, write_ctx, committed_steward, "RCA")).id
        b = _skill(session, write_ctx, committed_steward, "Fraud Detection Copy", industry=_industry(session, write_ctx, committed_steward, "RCB")).id
        session.flush()  # identical embeddings: each is the other's near-duplicate
        session.execute(text("UPDATE skills SET embedding = (SELECT embedding FROM skills WHERE id = :a) WHERE id = :b"), {"a": a, "b": b})
    first, second = sessions(), sessions()
    outcomes: dict[str, str] = {}
    try:
        outcomes["a"] = certify_skill(first, skill_id=a, notes=None, ctx=dataclasses.replace(write_ctx, actor="job:a")).status
        # b is certified while a's certification is still uncommitted: it must wait for it.
        worker = threading.Thread(target=lambda: outcomes.__setitem__("b", certify_skill(
            second, skill_id=b, notes=None, ctx=dataclasses.replace(write_ctx, actor="job:b")).status))
        worker.start()
        worker.join(timeout=1.0)
        assert worker.is_alive(), "the second certification ran its gates while the first was uncommitted"
        first.commit()
        worker.join(timeout=30)
        second.commit()
    finally:
        first.close(), second.close()
    assert outcomes == {"a": "certified", "b": "rejected"}


def _forge_next_version(session, skill, content: dict) -> None:
    """What an attacker with SQL but no key can do: insert a well-formed next version with a
    made-up signature (history refuses UPDATE and DELETE, not INSERT) and point the row at it."""
    import hashlib
    import json

    from models.canonical import canonical_bytes
    from models.chain import link_hash

    head = history(session, entity_id=skill.id)[-1]
    body = canonical_bytes(content)
    digest = hashlib.sha256(body).digest()
    link = link_hash("skill", skill.id, head.version + 1, bytes(head.link_hash), digest)
    session.execute(text("INSERT INTO entity_versions (entity_type, entity_id, version, content, content_hash, prev_link, "
                         "link_hash, kid, signature, actor) VALUES ('skill', :id, :v, :c, :h, :p, :l, :k, :s, 'attacker')"),
                    {"id": skill.id, "v": head.version + 1, "c": body, "h": digest, "p": bytes(head.link_hash), "l": link,
                     "k": head.kid, "s": b"\x00" * 64})
    _edit_through_sql(session, skill, version=head.version + 1, head_link_hash=link,
                      description=json.loads(body)["description"])


def test_a_forged_head_version_is_not_built_on_or_certified(db_session, write_ctx, steward) -> None:
    import json

    from models.errors import EntityTampered

    skill = _skill(db_session, write_ctx, steward, "Short Skill", description="too short")
    content = json.loads(history(db_session, entity_id=skill.id)[-1].content)
    _forge_next_version(db_session, skill, {**content, "description": GOOD})
    with pytest.raises(EntityTampered) as refused:
        certify_skill(db_session, skill_id=skill.id, notes=None, ctx=write_ctx)
    assert refused.value.extensions["finding"] == "bad-signature"
    with pytest.raises(EntityTampered):
        update_entity(db_session, entity_type=EntityType.SKILL, entity_id=skill.id, changes={"tags": ["b"]}, ctx=write_ctx)
    assert [v.actor for v in history(db_session, entity_id=skill.id)] == ["test", "attacker"]


def test_a_row_reset_to_version_zero_is_refused_not_a_crash(db_session, write_ctx, steward) -> None:
    from models.errors import EntityTampered

    skill = _skill(db_session, write_ctx, steward, "Some Skill")
    _edit_through_sql(db_session, skill, version=0, head_link_hash=None)
    with pytest.raises(EntityTampered):
        update_entity(db_session, entity_type=EntityType.SKILL, entity_id=skill.id, changes={"tags": ["b"]}, ctx=write_ctx)


def test_the_duplicate_gate_is_exact_whatever_plan_the_database_picks(db_session, write_ctx, steward) -> None:
    """The HNSW index finds its 40 nearest skills of any status and keeps the certified ones
    after: forty drafts nearer to the copy than the certified original hid the original. On a
    large registry the planner picks that index by itself; here enable_sort=off makes it."""
    original = _certified(db_session, write_ctx, steward, "Fraud Detection")
    for number in range(45):  # drafts, each nearer to the copy than the original is
        _skill(db_session, write_ctx, steward, f"Fraud Detection Copy {number}")
    copy = _skill(db_session, write_ctx, steward, "Fraud Detection Copy")
    db_session.execute(text("SET LOCAL enable_sort = off"))
    plan = db_session.execute(text(
        "EXPLAIN SELECT id FROM skills WHERE status = 'certified' ORDER BY embedding <=> "
        "(SELECT embedding FROM skills WHERE id = :id) LIMIT 1"), {"id": copy.id}).scalars().all()
    assert any("hnsw" in line for line in plan)  # the plan that hid the original before
    outcome = certify_skill(db_session, skill_id=copy.id, notes=None, ctx=write_ctx)
    assert outcome.status == "rejected"
    assert outcome.blocking_duplicate is not None and outcome.blocking_duplicate["id"] == str(original.id)


def _codes(findings) -> list[tuple[str, object]]:
    return sorted((f.code, f.entity_id) for f in findings)


def test_a_copy_certified_while_its_original_was_hidden_through_sql_is_found_by_the_audit(db_session, write_ctx, steward, keyring) -> None:
    """The gate reads the certified skills' stored vectors, which are not signed: nulled while
    a copy was certified, then put back, they left nothing for the chains to show. The audit
    runs the gate again from the signed texts and names the copy, certified second."""
    from tests.test_audit import run_audit

    original = _certified(db_session, write_ctx, steward, "Fraud Detection")
    copy = _skill(db_session, write_ctx, steward, "Fraud Detection Copy")
    kept = db_session.scalar(text("SELECT CAST(embedding AS text) FROM skills WHERE id = :id"), {"id": original.id})
    db_session.execute(text("UPDATE skills SET embedding = NULL WHERE id = :id"), {"id": original.id})
    assert certify_skill(db_session, skill_id=copy.id, notes=None, ctx=write_ctx).status == "certified"
    db_session.execute(text("UPDATE skills SET embedding = CAST(:kept AS vector) WHERE id = :id"),
                       {"kept": kept, "id": original.id})  # put back as it was
    db_session.expire_all()
    summary, findings = run_audit(db_session, keyring)
    assert _codes(findings) == [("certified-near-duplicate", copy.id)]
    (finding,) = findings
    assert finding.severity == "error" and str(original.id) in finding.detail and "after it" in finding.detail
    assert summary["non_compliant"] == 1 and summary["by_code"] == {"certified-near-duplicate": 1}


def test_a_copy_certified_while_its_original_was_set_to_draft_through_sql_is_found_by_the_audit(db_session, write_ctx, steward, keyring) -> None:
    from tests.test_audit import run_audit

    original = _certified(db_session, write_ctx, steward, "Fraud Detection")
    copy = _skill(db_session, write_ctx, steward, "Fraud Detection Copy")
    _certify_while_hidden(db_session, write_ctx, copy, original)
    db_session.expire_all()
    _, findings = run_audit(db_session, keyring)
    assert _codes(findings) == [("certified-near-duplicate", copy.id)]


def test_a_certified_skills_vector_changed_through_sql_is_an_embedding_mismatch(db_session, write_ctx, steward, keyring) -> None:
    """Left changed, the vector lets every later copy through: the audit compares it with the
    one computed from the signed text."""
    from tests.test_audit import run_audit

    original = _certified(db_session, write_ctx, steward, "Fraud Detection")
    far = "[" + ",".join(["0"] * 383 + ["1"]) + "]"
    db_session.execute(text("UPDATE skills SET embedding = CAST(:far AS vector) WHERE id = :id"), {"far": far, "id": original.id})
    _, findings = run_audit(db_session, keyring)
    assert _codes(findings) == [("embedding-mismatch", original.id)]
    assert findings[0].severity == "critical"
    db_session.execute(text("UPDATE skills SET embedding = NULL WHERE id = :id"), {"id": original.id})
    _, findings = run_audit(db_session, keyring)
    assert _codes(findings) == [("embedding-mismatch", original.id)]


def test_certified_skills_that_passed_the_gate_honestly_audit_clean(db_session, write_ctx, steward, keyring) -> None:
    """The second look finds nothing the gate let through honestly: distinct skills, a copy the
    gate refused, and a draft copy of a certified skill (only certified pairs count)."""
    from tests.test_audit import run_audit

    original = _skill(db_session, write_ctx, steward, "Fraud Detection")
    other = _skill(db_session, write_ctx, steward, "Pipeline Engineering",
                   description="Builds streaming ingestion services and keeps their schemas versioned and documented")
    copy = _skill(db_session, write_ctx, steward, "Fraud Detection Copy")
    for skill in (original, other):
        assert certify_skill(db_session, skill_id=skill.id, notes=None, ctx=write_ctx).status == "certified"
    assert certify_skill(db_session, skill_id=copy.id, notes=None, ctx=write_ctx).status == "rejected"
    summary, findings = run_audit(db_session, keyring)
    assert findings == [] and summary["non_compliant"] == 0


def test_the_tampering_endpoint_runs_the_second_look_too(db_session, write_ctx, steward, keyring) -> None:
    from models.audit import check_entity
    from tests.conftest import EMBEDDER

    original = _certified(db_session, write_ctx, steward, "Fraud Detection")
    db_session.execute(text("UPDATE skills SET embedding = NULL WHERE id = :id"), {"id": original.id})
    check = check_entity(db_session, entity_id=original.id, keyring=keyring, embedder=EMBEDDER)
    assert [f.code for f in check.findings] == ["embedding-mismatch"] and check.tampered


def test_the_incremental_audit_puts_a_skill_certified_since_the_digest_through_the_gate_again(db_session, write_ctx, steward, keyring) -> None:
    from models.ledger_store import store_digest
    from tests.test_audit import run_incremental

    original = _certified(db_session, write_ctx, steward, "Fraud Detection")
    copy = _skill(db_session, write_ctx, steward, "Fraud Detection Copy")
    store_digest(db_session, keyring=keyring)
    _certify_while_hidden(db_session, write_ctx, copy, original)
    db_session.expire_all()
    summary, findings = run_incremental(db_session, keyring)
    assert _codes(findings) == [("certified-near-duplicate", copy.id)]  # the copy changed since the digest
    assert summary["non_compliant"] == 1


def test_a_stored_vector_made_to_look_like_another_skills_accuses_only_its_own_skill(db_session, write_ctx, steward, keyring) -> None:
    """Candidates come from the stored vectors; each is confirmed from its own text, so the
    honest skill whose vector was copied is not named a near-duplicate (helper-110)."""
    from tests.test_audit import run_audit

    honest = _skill(db_session, write_ctx, steward, "Fraud Detection")
    other = _skill(db_session, write_ctx, steward, "Pipeline Engineering",
                   description="Builds streaming ingestion services and keeps their schemas versioned and documented")
    for skill in (honest, other):
        assert certify_skill(db_session, skill_id=skill.id, notes=None, ctx=write_ctx).status == "certified"
    # The first certified takes the later one's vector: by stored vectors alone, the later
    # one would be a near-duplicate certified after it.
    db_session.execute(text("UPDATE skills SET embedding = (SELECT embedding FROM skills WHERE id = :other) WHERE id = :honest"),
                       {"honest": honest.id, "other": other.id})
    _, findings = run_audit(db_session, keyring)
    assert _codes(findings) == [("embedding-mismatch", honest.id)]


def test_the_second_look_finds_the_same_pairs_however_few_vectors_go_in_one_statement(db_session, write_ctx, steward, keyring, monkeypatch) -> None:
    import models.certification_gates as certification_gates
    from tests.test_audit import run_audit

    original = _certified(db_session, write_ctx, steward, "Fraud Detection")
    copies = [_skill(db_session, write_ctx, steward, f"Fraud Detection Copy {n}") for n in range(3)]
    db_session.execute(text("UPDATE skills SET status = 'draft' WHERE id = :id"), {"id": original.id})
    for copy in copies:  # the gate lets each through: only drafts are near, until the original is back
        db_session.execute(text("UPDATE skills SET status = 'draft' WHERE status = 'certified' AND id <> :id"), {"id": copy.id})
        assert certify_skill(db_session, skill_id=copy.id, notes=None, ctx=write_ctx).status == "certified"
    db_session.execute(text("UPDATE skills SET status = 'certified' WHERE id = ANY(:ids)"),
                       {"ids": [original.id, *(c.id for c in copies)]})
    db_session.expire_all()
    monkeypatch.setattr(certification_gates, "PAIRS_PER_STATEMENT", 1)
    _, findings = run_audit(db_session, keyring, batch_size=4)
    later = sorted(str(c.id) for c in copies)
    assert sorted({str(f.entity_id) for f in findings if f.code == "certified-near-duplicate"}) == later
    assert {f.code for f in findings} == {"certified-near-duplicate"}


def test_retiring_a_certified_skill_withdraws_its_certificate_and_answers_the_audit(db_session, write_ctx, steward, keyring) -> None:
    """certified-near-duplicate counts against the registry until it is answered: retiring
    the later copy (the one change a certified skill takes) withdraws its certificate in a
    signed version, and the next audit is clean. Anything more than the status stays 409."""
    from tests.test_audit import run_audit

    original = _certified(db_session, write_ctx, steward, "Fraud Detection")
    copy = _skill(db_session, write_ctx, steward, "Fraud Detection Copy")
    _certify_while_hidden(db_session, write_ctx, copy, original)
    db_session.expire_all()
    assert _codes(run_audit(db_session, keyring)[1]) == [("certified-near-duplicate", copy.id)]
    with pytest.raises(ImmutableEntity):
        update_entity(db_session, entity_type=EntityType.SKILL, entity_id=copy.id,
                      changes={"status": "retired", "description": "something else entirely now"}, ctx=write_ctx)
    retired = _retire(db_session, write_ctx, copy.id)
    assert retired.status == "retired" and retired.certificate is not None  # withdrawn, still in its history
    assert [json.loads(bytes(v.content))["status"] for v in history(db_session, entity_id=copy.id)][-2:] == ["certified", "retired"]
    assert run_audit(db_session, keyring)[1] == []
    with pytest.raises(NotCertifiable):
        certify_skill(db_session, skill_id=copy.id, notes=None, ctx=dataclasses.replace(write_ctx, actor="job:again"))


def test_a_partner_row_edited_to_look_like_an_honest_skill_accuses_no_one_but_itself(db_session, write_ctx, steward, keyring) -> None:
    """Both sides of a pair are judged by signed content: a row that is not its signed head
    takes no part (helper-111), in a full audit and in one scoped to the honest skill."""
    from tests.test_audit import run_audit

    partner = _skill(db_session, write_ctx, steward, "Pipeline Engineering",
                     description="Builds streaming ingestion services and keeps their schemas versioned and documented")
    honest = _skill(db_session, write_ctx, steward, "Fraud Detection")
    for skill in (partner, honest):  # the partner first
        assert certify_skill(db_session, skill_id=skill.id, notes=None, ctx=write_ctx).status == "certified"
    db_session.execute(text("UPDATE skills SET name = 'Fraud Detection Copy', description = :d, "
                            "embedding = (SELECT embedding FROM skills WHERE id = :h) WHERE id = :p"),
                       {"d": GOOD, "h": honest.id, "p": partner.id})
    db_session.expire_all()
    assert _codes(run_audit(db_session, keyring)[1]) == [("row-content-mismatch", partner.id)]
    scoped = run_audit(db_session, keyring, {"scope": {"entity_type": "skill", "entity_ids": [str(honest.id)]}})[1]
    assert scoped == []


def test_a_retired_skill_set_back_to_certified_through_sql_accuses_no_later_copy(db_session, write_ctx, steward, keyring) -> None:
    from tests.test_audit import run_audit

    original = _certified(db_session, write_ctx, steward, "Fraud Detection")
    _retire(db_session, write_ctx, original.id)
    _certified(db_session, write_ctx, steward, "Fraud Detection Copy")  # honestly
    assert run_audit(db_session, keyring)[1] == []
    db_session.execute(text("UPDATE skills SET status = 'certified' WHERE id = :id"), {"id": original.id})
    db_session.expire_all()
    assert _codes(run_audit(db_session, keyring)[1]) == [("row-content-mismatch", original.id)]


class _PairAtCosine:
    """The hashing embedder, but "Alphaband" and "Betaband" texts get vectors at a set cosine."""

    dim = EMBEDDER.dim

    def __init__(self, similarity: float) -> None:
        self.similarity = similarity

    def embed(self, texts: list[str]) -> list[list[float]]:
        return [self._one(text) for text in texts]

    def _one(self, text: str) -> list[float]:
        if "Alphaband" not in text and "Betaband" not in text:
            return EMBEDDER.embed_one(text)
        vector = [0.0] * self.dim
        vector[1] = 1.0 if "Alphaband" in text else self.similarity
        vector[2] = 0.0 if "Alphaband" in text else math.sqrt(1.0 - self.similarity**2)
        return vector


@pytest.mark.parametrize(("similarity", "found"), [(0.9499995, False), (0.9501, True)])
def test_the_second_look_accuses_no_pair_the_gate_let_through_by_its_own_arithmetic(
        db_session, write_ctx, steward, keyring, similarity, found) -> None:
    """Just below 0.95 the gate certifies both, honestly; the audit's margin errs toward
    silence (helper-111). Above it, a pair certified side by side is found."""
    from tests.test_audit import run_audit

    embedder = _PairAtCosine(similarity)
    ctx = dataclasses.replace(write_ctx, embedder=embedder)
    first, second = (_skill(db_session, ctx, steward, name) for name in ("Alphaband Skill", "Betaband Skill"))
    assert certify_skill(db_session, skill_id=first.id, notes=None, ctx=ctx).status == "certified"
    if found:  # the gate refuses it: certified while the first was hidden
        db_session.execute(text("UPDATE skills SET status = 'draft' WHERE id = :id"), {"id": first.id})
    assert certify_skill(db_session, skill_id=second.id, notes=None, ctx=ctx).status == "certified"
    db_session.execute(text("UPDATE skills SET status = 'certified' WHERE id = :id"), {"id": first.id})
    db_session.expire_all()
    _, findings = run_audit(db_session, keyring, embedder=embedder)
    assert _codes(findings) == ([("certified-near-duplicate", second.id)] if found else [])


def test_a_retired_certified_skill_takes_no_change_but_retiring_it_again(db_session, write_ctx, steward) -> None:
    skill = _certified(db_session, write_ctx, steward, "Fraud Detection")
    retired = _retire(db_session, write_ctx, skill.id)
    with pytest.raises(ImmutableEntity):
        update_entity(db_session, entity_type=EntityType.SKILL, entity_id=skill.id, changes={"status": "draft"}, ctx=write_ctx)
    with pytest.raises(NotCertifiable):
        certify_skill(db_session, skill_id=skill.id, notes=None, ctx=dataclasses.replace(write_ctx, actor="job:2"))
    again = _retire(db_session, write_ctx, skill.id)
    assert again.version == retired.version  # a client retrying its retire gets 200, not a conflict


def test_a_partner_is_judged_as_stored_now_not_as_the_session_last_saw_it(db_session, write_ctx, steward, keyring) -> None:
    """The audit's session may hold a partner from earlier (here the test's own): it is read
    again, so its row edited since takes no part (helper-112)."""
    from tests.test_audit import run_audit

    original = _certified(db_session, write_ctx, steward, "Fraud Detection")
    copy = _skill(db_session, write_ctx, steward, "Fraud Detection Copy")
    _certify_while_hidden(db_session, write_ctx, copy, original)
    db_session.execute(text("UPDATE skills SET governance_notes = 'edited' WHERE id = :id"),
                       {"id": original.id})  # no expire_all: the session still holds the original as it was
    assert _codes(run_audit(db_session, keyring)[1]) == [("row-content-mismatch", original.id)]


def test_a_skill_whose_own_row_was_edited_into_a_copy_has_only_its_row_finding(db_session, write_ctx, steward, keyring) -> None:
    """The audited side is judged by signed content too: a later skill's row edited to copy an
    earlier one's text is tampering, not a near-duplicate its certificate vouched for."""
    from tests.test_audit import run_audit

    _certified(db_session, write_ctx, steward, "Fraud Detection")
    later = _certified(db_session, write_ctx, steward, "Pipeline Engineering",
                       description="Builds streaming ingestion services and keeps their schemas versioned and documented")
    db_session.execute(text("UPDATE skills SET name = 'Fraud Detection Copy', description = :d WHERE id = :id"),
                       {"d": GOOD, "id": later.id})
    db_session.expire_all()
    assert _codes(run_audit(db_session, keyring)[1]) == [("row-content-mismatch", later.id)]
