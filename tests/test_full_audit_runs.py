"""Adversarial review of the full compliance audit run and its reports.

A registry with one entity per kind of tampering, audited in chunks and small batches:
every kind shows up on its own entity, once, and the counters match; an entity row
deleted past its guard; a run stopped part-way and what its report page calls clean;
the signed report refused when truncated, reordered or passed off as another run's.
"""

from __future__ import annotations

import collections
import math
import json
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from models.audit_chunks import audit_chunk_step, pending_chunks
from models.audit_close import summarize_run
from models.audit_runs import id_ranges, start_run
from models.audit_tables import AuditChunk
from models.canonical import canonical_bytes
from models.entities import EntityType, Skill
from models.errors import JwsError
from models.job_lifecycle import create_job
from models.registry import create_entity, update_entity
from models.report_view import report_view
from models.reports import verify_report
from tests.report_builders import build_report, signed_report
from tests.conftest import EMBEDDER
from tests.test_audit import BATTERY, digest_of, lift_guard, run_audit, tamper_delete_newest

E = EntityType


def make_skill(session: Session, ctx: Any, steward: Any, n: int) -> Skill:
    skill = create_entity(session, entity_type=E.SKILL, ctx=ctx, data={
        "name": f"Review Skill {n}", "skill_key": f"review-skill-{n}", "category": "technical",
        "description": "version one", "governance_agent_id": steward})
    for text_ in ("version two", "version three"):
        update_entity(session, entity_type=E.SKILL, entity_id=skill.id, changes={"description": text_}, ctx=ctx)
    session.flush()
    return skill


# What each kind of tampering in tests.test_audit.BATTERY yields on its own entity, with
# every signature checked: exactly these findings, each once.
EXPECTED = {
    "content-hash-mismatch": [("content-hash-mismatch", 2)],
    "rehashed-version": [("broken-link", 3), ("rehashed-version", 2)],
    "version-gap": [("version-gap", 3)],
    "head-rolled-back": [("head-rolled-back", 2)],
    "versions-out-of-order": [("broken-link", 3), ("link-hash-mismatch", 2), ("link-hash-mismatch", 3),
                              ("versions-out-of-order", 2)],
    "bad-signature": [("bad-signature", 2)],
    "unknown-signing-key": [("unknown-signing-key", 2)],
    "row-content-mismatch": [("row-content-mismatch", 3)],
    "chain-rewritten": [("chain-rewritten", 3)],
    "stale-head": [("stale-head", 1)],
}


def test_every_kind_of_tampering_at_once_is_found_once_on_its_own_entity_and_counted_once(
        db_session, write_ctx, steward, keyring) -> None:
    tampered = {code: make_skill(db_session, write_ctx, steward, n) for n, code in enumerate(BATTERY)}
    for n in range(6):
        make_skill(db_session, write_ctx, steward, 100 + n)
    digest = digest_of(db_session, keyring, with_leaves=True)
    for code, skill in tampered.items():
        BATTERY[code](db_session, skill, keyring)

    summary, findings = run_audit(db_session, keyring, {"verify_signatures": "all", "against_digest": digest},
                                  batch_size=2)
    by_entity = collections.defaultdict(list)
    for f in findings:
        by_entity[f.entity_id].append((f.code, f.version))
    assert {code: sorted(by_entity.pop(skill.id, [])) for code, skill in tampered.items()} == EXPECTED
    assert dict(by_entity) == {}  # nothing about the clean ones, nothing run-level
    assert summary["total_entities"] > db_session.scalar(select(func.count()).select_from(Skill)) > len(BATTERY) + 6
    assert summary["non_compliant"] == len(BATTERY)
    assert summary["compliant"] == summary["total_entities"] - len(BATTERY)
    expected_codes = collections.Counter(code for found in EXPECTED.values() for code, _ in found)
    assert summary["by_code"] == dict(sorted(expected_codes.items()))
    assert summary["findings"] == sum(expected_codes.values()) == len(findings)


def test_an_entity_row_deleted_past_its_guard_is_found_by_a_full_audit(db_session, write_ctx, steward, keyring) -> None:
    """Plant never deletes an entity row (a deletion is a signed version and a stamp); a row
    gone while its signed chain is still in entity_versions was deleted outside Plant, as a
    version deleted past the guard is. The full audit (beat's, with no digest) walked only the
    rows: it never read that chain, and reported the registry clean with one entity fewer.
    Now the chain is ``entity-row-missing`` and its entity one of the scope's, non-compliant."""
    skill_id = make_skill(db_session, write_ctx, steward, 1).id
    clean, _ = run_audit(db_session, keyring, {"verify_signatures": "all"})
    assert clean["non_compliant"] == 0
    head = db_session.scalar(text("SELECT max(version) FROM entity_versions WHERE entity_id = :id"), {"id": skill_id})
    lift_guard(db_session, "DELETE FROM skills WHERE id = :id", table="skills", id=skill_id)
    for params in ({"verify_signatures": "all"}, {"scope": {"entity_type": "skill"}},
                   {"scope": {"entity_ids": [str(skill_id)]}}):
        summary, findings = run_audit(db_session, keyring, params)
        assert [(f.entity_id, f.code, f.version) for f in findings] == [(skill_id, "entity-row-missing", head)], params
        assert (summary["non_compliant"], summary["by_code"]) == (1, {"entity-row-missing": 1}), params
        assert summary["total_entities"] == summary["compliant"] + 1, params
    assert run_audit(db_session, keyring, {"verify_signatures": "all"})[0]["total_entities"] == clean["total_entities"]
    other_type, findings = run_audit(db_session, keyring, {"scope": {"entity_type": "agent"}})
    assert (other_type["non_compliant"], findings) == (0, [])


def test_a_stopped_run_names_the_rowless_chains_among_the_entities_of_its_scope(db_session, write_ctx, steward,
                                                                                  keyring) -> None:
    """The plan counts rows; a rowless chain is an entity of the scope too, so a run that stopped
    says it audited so many "of" rows and rowless chains both (helper-146: "4 of 4" for a run
    that had not finished)."""
    for n in range(4):
        make_skill(db_session, write_ctx, steward, n)
    gone = make_skill(db_session, write_ctx, steward, 9).id
    lift_guard(db_session, "DELETE FROM skills WHERE id = :id", table="skills", id=gone)
    rows = db_session.scalar(select(func.count()).select_from(Skill))
    job = create_job(db_session, kind="audit.run", queue="audit", params={"scope": {"entity_type": "skill"}})
    run = start_run(db_session, job_id=job.id, params=job.params, keyring=keyring, embedder=EMBEDDER, chunk_entities=1)
    first = pending_chunks(db_session, run.id)[0]
    while not audit_chunk_step(db_session, chunk_id=first, keyring=keyring, embedder=EMBEDDER, batch_size=2).done:
        pass
    summary = summarize_run(db_session, keyring=keyring, run_id=run.id, status="failed")
    assert f"of the {rows + 1} entities in its scope" in summary["coverage"]["stopped"], summary["coverage"]




def test_a_stopped_run_s_report_page_counts_as_clean_the_entities_it_audited_clean(
        db_session, write_ctx, steward, keyring) -> None:
    """The page says "N audited entities have none" (no finding): for a run that stopped
    part-way, the digest's findings about entities it never reached are no audited entity's."""
    skills = [make_skill(db_session, write_ctx, steward, n) for n in range(12)]
    digest = digest_of(db_session, keyring, with_leaves=True)
    every = list(db_session.scalars(select(Skill.id)))
    # The chunk the run audits before it stops: chunks are fixed slices of the id space.
    chunk_no, first = next((n, r) for n, r in enumerate(id_ranges(math.ceil(len(every) / 3)))
                           if any(r[0] <= i <= r[1] for i in every))
    audited = [i for i in every if first[0] <= i <= first[1]]
    assert len(audited) < len(skills)
    for skill in skills:
        if skill.id not in audited:
            tamper_delete_newest(db_session, skill, keyring)  # rolled back since the digest
    job = create_job(db_session, kind="audit.run", queue="audit",
                     params={"scope": {"entity_type": "skill"}, "against_digest": digest})
    run = start_run(db_session, job_id=job.id, params=job.params, keyring=keyring, embedder=EMBEDDER,
                    chunk_entities=3)
    chunk = db_session.scalar(select(AuditChunk).where(AuditChunk.run_id == run.id, AuditChunk.chunk_no == chunk_no))
    assert (chunk.low_id, chunk.high_id) == first
    while not audit_chunk_step(db_session, chunk_id=chunk.id, keyring=keyring, embedder=EMBEDDER, batch_size=2).done:
        pass
    summary = summarize_run(db_session, keyring=keyring, run_id=run.id, status="failed")
    assert (summary["total_entities"], summary["compliant"], summary["non_compliant"]) == (len(audited), len(audited), 0)
    view = report_view(db_session, run_id=run.id, keyring=keyring)
    assert view.clean_entities == len(audited), (view.clean_entities, len(audited))


def test_an_audit_whose_chunks_wait_behind_another_audit_is_not_failed_as_worker_lost(
        worker_sessions, settings, seeded, monkeypatch) -> None:
    """Deployed, the audit queue has one worker (`worker-audit --concurrency 1`): the chunks
    of an audit started while another runs wait behind that one's. Nothing died and no
    message was lost, yet the job's lease (renewed only by its chunks' batches) ran out, the
    sweep took it for a dead worker's each time, and the job failed worker-lost (helper-141).
    Each batch on the audit queue now renews the leases of the audits waiting behind it.

    Time is moved on in the database: before each of the first audit's chunks, the second's
    lease is put 5 s from its end (the wait ran most of a lease), and after it, every lease is
    moved 10 s back and the sweep runs, as if those seconds had passed."""
    from models.db import transaction
    from models.job_lifecycle import claim_job, get_job
    from models.jobs import Job
    from sqlalchemy import update
    from tasks import audit, runtime
    from tasks.maintenance import requeue_stale_jobs
    from tests.conftest import SentTasks

    monkeypatch.setattr(runtime, "settings", lambda: settings.model_copy(
        update={"job_max_attempts": 3, "audit_batch_size": 2, "audit_chunk_entities": 5}))
    queue: list[tuple[str, list]] = []  # the audit queue, in order
    monkeypatch.setattr(audit.audit_run.app, "send_task", lambda name, *, args, queue_=None, **kw: queue.append((name, args)))
    jobs = []
    for _ in range(2):
        with transaction(worker_sessions) as session:
            job_id = create_job(session, kind="audit.run", params={"verify_signatures": "heads"}, queue="audit").id
        with transaction(worker_sessions) as session:
            claim = claim_job(session, job_id=job_id, worker="audit-worker", lease_seconds=300)
        audit._start_audit(claim, lambda *_: None)
        jobs.append(job_id)
    first, second = jobs
    first_chunks = [args for name, args in queue if args[0] == str(first)]
    assert len(first_chunks) >= 3
    rescued = []
    for args in first_chunks:
        with transaction(worker_sessions) as session:
            session.execute(update(Job).where(Job.id == second).values(lease_expires_at=text("now() + interval '5 seconds'")))
        audit.audit_chunk(*args)
        with transaction(worker_sessions) as session:
            session.execute(update(Job).where(Job.status == "running").values(
                lease_expires_at=Job.lease_expires_at - text("interval '10 seconds'"),
                # long published, each as long as the other: the renewals read the order they were published in
                enqueued_at=func.coalesce(Job.enqueued_at, Job.created_at) - text("interval '2 hours'")))
        beat = SentTasks()
        type(requeue_stale_jobs._get_current_object()).run(beat)
        rescued += [args[0] for _, args, _, _ in beat.sent]
    assert rescued == []
    for _name, args in queue:  # the worker is free: the second audit's chunks, in order
        if args[0] == str(second):
            audit.audit_chunk(*args)
    with worker_sessions() as session:
        assert [(get_job(session, j).status, get_job(session, j).attempts) for j in jobs] == [("succeeded", 1)] * 2


def test_a_real_run_s_report_refuses_truncated_reordered_or_another_run_s_findings(
        db_session, write_ctx, steward, keyring) -> None:
    skills = [make_skill(db_session, write_ctx, steward, n) for n in range(3)]
    for code, skill in zip(("row-content-mismatch", "bad-signature", "stale-head"), skills, strict=True):
        BATTERY[code](db_session, skill, keyring)
    reports = []
    for _ in range(2):
        job = create_job(db_session, kind="audit.run", queue="audit", params={"verify_signatures": "all"})
        run = start_run(db_session, job_id=job.id, params=job.params, keyring=keyring, embedder=EMBEDDER, chunk_entities=3)
        for chunk_id in pending_chunks(db_session, run.id):
            while not audit_chunk_step(db_session, chunk_id=chunk_id, keyring=keyring, embedder=EMBEDDER,
                                       batch_size=2).done:
                pass
        summarize_run(db_session, keyring=keyring, run_id=run.id)
        reports.append(build_report(db_session, run_id=run.id, keyring=keyring))
    first, second = reports
    assert len(first["findings"]) == 3
    document = json.loads(signed_report(first, keyring))
    verify_report(canonical_bytes(document), keyring)

    def resigned_as(report: dict) -> bytes:
        return canonical_bytes({"report": report, "signature": document["signature"]})

    truncated = {**first, "findings": first["findings"][:-1]}
    reordered = {**first, "findings": list(reversed(first["findings"]))}
    as_the_other = {**first, "run": second["run"]}  # the same findings, under the other run's record
    other_findings = {**first, "findings": second["findings"]}  # same codes, other finding ids
    for forged in (truncated, reordered, as_the_other, other_findings):
        with pytest.raises(JwsError):
            verify_report(resigned_as(forged), keyring)


def test_a_batch_renews_only_live_leases_past_half_of_audits_with_chunks_to_do(db_session, write_ctx, steward,
                                                                               keyring) -> None:
    """What ``keep_waiting_audits_leased`` leaves alone: a lapsed lease (the sweep's to judge),
    one with more than half its term left (no write every batch), a job asked to cancel, an
    audit whose chunks are all done, and the calling job itself."""
    from models.audit_chunks import keep_waiting_audits_leased, record_chunks_published
    from models.job_lifecycle import claim_job
    from models.jobs import Job
    from sqlalchemy import update

    make_skill(db_session, write_ctx, steward, 1)
    ids = []
    for _ in range(6):
        job = create_job(db_session, kind="audit.run", queue="audit", params={"verify_signatures": "heads"})
        claim = claim_job(db_session, job_id=job.id, worker="w", lease_seconds=300)
        run = start_run(db_session, job_id=job.id, params=job.params, keyring=keyring, embedder=EMBEDDER, chunk_entities=3)
        record_chunks_published(db_session, run_id=run.id, attempt=claim.attempt)
        ids.append(job.id)
    me, waiting, lapsed, fresh, cancelling, done = ids
    ends = {waiting: "10 seconds", lapsed: "-1 second", fresh: "200 seconds", cancelling: "10 seconds",
            done: "10 seconds", me: "10 seconds"}
    for job_id, left in ends.items():
        db_session.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=text(f"now() + interval '{left}'")))
    db_session.execute(update(Job).where(Job.id == cancelling).values(cancel_requested_at=text("now()")))
    # One transaction stamped every job alike: the others were published after mine (only those are renewed).
    db_session.execute(text("UPDATE jobs SET enqueued_at = now() - interval '1 minute' WHERE id = :me"), {"me": me})
    db_session.execute(text("UPDATE audit_chunks SET done = true FROM audit_runs r WHERE r.id = audit_chunks.run_id "
                            "AND r.job_id = :job"), {"job": done})
    assert keep_waiting_audits_leased(db_session, job_id=me, lease_seconds=300) == 1
    left = dict(db_session.execute(select(Job.id, func.extract("epoch", Job.lease_expires_at - func.now()))
                                   .where(Job.id.in_(ids))).all())
    assert left[waiting] > 290
    assert all(left[j] < 201 for j in (me, lapsed, fresh, cancelling, done))


def test_an_audit_asked_to_cancel_while_it_was_planned_publishes_no_chunk(worker_sessions, settings, seeded,
                                                                          monkeypatch) -> None:
    """Progress written at the end of the plan returns whether a cancel was asked; the plan
    ignored it and published every chunk, each of which then ran a batch only to find the
    cancel. The job now ends ``cancelled`` there, its run closed, and nothing is published."""
    from models.audit_tables import AuditRun
    from models.db import transaction
    from models.job_lifecycle import claim_job, get_job
    from models.jobs import Job
    from sqlalchemy import update
    from tasks import audit, runtime

    monkeypatch.setattr(runtime, "settings", lambda: settings.model_copy(update={"audit_chunk_entities": 5}))
    sent: list[str] = []
    monkeypatch.setattr(audit.audit_run.app, "send_task", lambda name, **kw: sent.append(name))
    with transaction(worker_sessions) as session:
        job_id = create_job(session, kind="audit.run", params={"verify_signatures": "heads"}, queue="audit").id
    with transaction(worker_sessions) as session:
        claim = claim_job(session, job_id=job_id, worker="audit-worker", lease_seconds=300)
        session.execute(update(Job).where(Job.id == job_id).values(cancel_requested_at=func.now()))
    audit._start_audit(claim, lambda *_: None)
    with worker_sessions() as session:
        run = session.scalars(select(AuditRun).where(AuditRun.job_id == job_id)).one()
        assert (get_job(session, job_id).status, sent, run.finished_at is not None) == ("cancelled", [], True)
