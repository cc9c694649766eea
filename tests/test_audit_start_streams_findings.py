"""Starting a run streams the findings its start writes: memory stays bounded however many
it writes, and the plan signs exactly what it signed when it held them all.

Before, :func:`models.audit_runs.start_run` wrote its start's findings with
:func:`models.audit_runs.insert_findings`, which returned every one as an ORM object (kept
in the session's identity map), and :func:`models.audit_record.sign_plan` read them all
back at once, as rows, with their resources and the canonical bytes of the whole array. A
start that writes one finding per entity (every chain's row gone, a digest every entity
fails) held all of them, several times over. It now writes them a page at a time
(:func:`models.audit_runs.insert_start_findings`) and the plan reads them back through a
cursor the server holds, hashing as it goes. The old start is kept here (:func:`old_start_run`,
verbatim but for its names) to prove the new one signs the same bytes over the same data.
"""

from __future__ import annotations

import tracemalloc
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import pytest
from sqlalchemy import func, insert, select, text
from sqlalchemy.orm import Session

from models.audit import FindingRow, rowless_chains
from models.audit_certificates import certificate_findings
from models.audit_findings import all_findings
from models.audit_findings_chain import FINDINGS_NONE, findings_chained
from models.audit_record import PLAN, _plan, _signed, record_step, sign_checkpoint
from models.audit_runs import (
    AuditParams, digest_findings, id_ranges, plan_repairs, start_run, validate_params,
)
from models.audit_tables import AuditChunk, AuditFinding, AuditRun
from models.entities import ENTITY_MODELS, EntityType
from models.incremental_audit import audit_since_latest_digest
from models.job_lifecycle import create_job
from models.key_seals import SEAL_INVALID_CODE, seal_problems
from models.ledger_store import store_digest
from models.repair import settle_repairs
from models.signing import KeyRing
from tests.conftest import EMBEDDER


# ---- the start as it was (commit 7bf36fc), every finding of the start held at once -------------------------------

def old_insert_findings(session: Session, run_id: uuid.UUID, findings: list[FindingRow], *, chunk_id: int | None = None,
                        step: int | None = None) -> list[AuditFinding]:
    if not findings:
        return []
    return list(session.scalars(insert(AuditFinding).returning(AuditFinding, sort_by_parameter_order=True), [
        {"run_id": run_id, "entity_type": f.entity_type, "entity_id": f.entity_id, "version": f.version, "code": f.code,
         "severity": f.severity, "rule_id": f.rule_id, "detail": f.detail, "chunk_id": chunk_id, "step": step}
        for f in findings
    ]))


def old_sign_plan(session: Session, run: AuditRun, chunks: list[AuditChunk], keyring: KeyRing, *,
                  repairs: list[dict[str, str]]) -> None:
    session.flush()  # the chunks' ids and the run's created_at
    session.refresh(run, ["created_at"])
    written = findings_chained(FINDINGS_NONE, all_findings(session, run.id))  # the run's start wrote them all, in this transaction
    named = {"findings": written, "repairs": repairs}
    run.plan_signed = {**_signed(keyring, PLAN, {**_plan(run, chunks), **named}), **named}
    for chunk in chunks:
        sign_checkpoint(run, chunk, keyring, step=record_step(session, run, chunk))


def old_incremental(session: Session, run: AuditRun, keyring: KeyRing, embedder: Any,
                    repairs: list[dict[str, str]]) -> AuditRun:
    from models.audit_runs import MAX_UUID
    from models.constitution import constitution_version
    result = audit_since_latest_digest(session, keyring=keyring, embedder=embedder)
    old_insert_findings(session, run.id, result.findings)
    chunk = AuditChunk(
        run_id=run.id, chunk_no=0, entity_type="incremental", low_id=uuid.UUID(int=0), high_id=uuid.UUID(int=MAX_UUID),
        done=True, counters={"entities": result.entities, "versions_verified": result.versions_verified,
                             "since_digest": result.digest_id, "coverage": result.coverage(),
                             "constitution_versions": [constitution_version()] if result.entities else []},
    )
    session.add(chunk)
    run.entities_total = result.entities
    run.chunks_total = run.chunks_done = 1
    old_sign_plan(session, run, [chunk], keyring, repairs=repairs)
    session.flush()
    return run


def old_start_run(session: Session, *, job_id: uuid.UUID, params: dict[str, Any], keyring: KeyRing, embedder: Any,
                  chunk_entities: int) -> AuditRun:
    import math
    existing = session.scalar(select(AuditRun).where(AuditRun.job_id == job_id))
    if existing is not None:
        return existing
    validate_params(params)
    scope = AuditParams.from_json(params)
    settle_repairs(session)
    run = AuditRun(job_id=job_id, params=params, chunks_published_attempt=0)
    session.add(run)
    session.flush()
    old_insert_findings(session, run.id, [FindingRow(None, None, None, SEAL_INVALID_CODE, problem) for problem in seal_problems(session, keyring)])
    repairs = plan_repairs(session, run, keyring)
    if params.get("since") == "latest-digest":
        return old_incremental(session, run, keyring, embedder, repairs)
    chunks: list[AuditChunk] = []
    for entity_type in scope.types():
        model = ENTITY_MODELS[entity_type]
        count = session.scalar(scope.ids_filter(model, select(func.count()).select_from(model))) or 0
        run.entities_total += count
        parts = max(1, math.ceil(count / chunk_entities))
        for low, high in id_ranges(parts):
            chunks.append(AuditChunk(run_id=run.id, chunk_no=len(chunks), entity_type=entity_type.value, low_id=low, high_id=high))
    session.add_all(chunks)
    run.chunks_total = len(chunks)
    if scope.against_digest is not None:
        old_insert_findings(session, run.id, scope.scoped(session, digest_findings(session, scope.against_digest, keyring)))
    old_insert_findings(session, run.id, scope.scoped(session, rowless_chains(session)))
    if EntityType.SKILL in scope.types():
        ids = {uuid.UUID(i) for i in scope.entity_ids} if scope.entity_ids else None
        old_insert_findings(session, run.id, scope.scoped(session, certificate_findings(session, skill_ids=ids)))
    old_sign_plan(session, run, chunks, keyring, repairs=repairs)
    session.flush()
    return run


# ---- the same data, started by each -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Recording(KeyRing):
    """A key ring recording every statement it signs (a :class:`KeyRing`: the incremental
    audit looks keys up in one)."""

    signed: list[bytes] = field(default_factory=list)

    @classmethod
    def of(cls, keyring: KeyRing) -> Recording:
        return cls(**{f.name: getattr(keyring, f.name) for f in fields(KeyRing) if f.init})

    def sign(self, statement: bytes) -> Any:
        self.signed.append(bytes(statement))
        return super().sign(statement)


TYPES = [t.value for t in EntityType]


def rowless(session: Session, count: int, keyring: KeyRing) -> None:
    """``count`` chains no row holds (a version each, of every type in turn, at various
    versions), INSERTed as the runtime role may: one ``entity-row-missing`` finding each at
    a full run's start."""
    session.execute(text(
        "INSERT INTO entity_versions (entity_type, entity_id, version, content, content_hash, prev_link, link_hash,"
        " kid, signature, actor) SELECT (CAST(:types AS text[]))[1 + n % 5], gen_random_uuid(), 1 + n % 7, '\\x7b7d'::bytea,"
        " sha256('\\x7b7d'::bytea), sha256(('prev ' || n)::bytea), sha256(('link ' || n || ' ' || :salt)::bytea),"
        " :kid, sha256(('sig ' || n)::bytea), 'intruder' FROM generate_series(1, :count) AS n"),
        {"types": TYPES, "count": count, "kid": keyring.active.kid, "salt": uuid.uuid4().hex})


def _started_by(session: Session, keyring: KeyRing, start: Callable[..., AuditRun],
                params: dict[str, Any]) -> tuple[list[bytes], dict[str, Any], list[tuple[Any, ...]]]:
    """What ``start`` signs and writes for a new run of ``params`` (its id written as
    ``RUN``, so two starts compare), rolled back after, the findings' ids drawn again from
    where they were (so that a second start draws the same)."""
    sequence = session.scalar(text("SELECT pg_get_serial_sequence('audit_findings', 'id')"))
    last, called = session.execute(text(f"SELECT last_value, is_called FROM {sequence}")).one()
    recording = Recording.of(keyring)
    savepoint = session.begin_nested()
    job = create_job(session, kind="audit.run", params=params, queue="audit")
    run = start(session, job_id=job.id, params=job.params, keyring=recording, embedder=EMBEDDER, chunk_entities=50_000)
    session.flush()
    ids = (str(run.id).encode(), str(job.id).encode())
    signed = [s.replace(ids[0], b"RUN").replace(ids[1], b"JOB") for s in recording.signed]
    findings = [tuple(f)[:1] + tuple(f)[2:] for f in all_findings(session, run.id)]  # but for the run's id
    plan = run.plan_signed["findings"]
    savepoint.rollback()
    session.execute(text("SELECT setval(:sequence, :last, :called)"), {"sequence": sequence, "last": last, "called": called})
    session.expire_all()
    return signed, plan, findings


VARIANTS = {
    "none": ({}, 0, lambda s, k: None),
    "digest_invalid": ({"against_digest": {}}, 1, lambda s, k: None),
    "rowless_pages": ({}, 2_345, lambda s, k: rowless(s, 2_345, k)),
    "rowless_page_exactly": ({}, 1_000, lambda s, k: rowless(s, 1_000, k)),
    "rowless_scoped": ({"scope": {"entity_type": "skill"}}, 300, lambda s, k: rowless(s, 1_500, k)),
    "digest_invalid_and_rowless": ({"against_digest": {"type": "nope"}}, 1_201, lambda s, k: rowless(s, 1_200, k)),
    "incremental_rowless": ({"since": "latest-digest"}, 1_100,
                            lambda s, k: (store_digest(s, keyring=k), rowless(s, 1_100, k))),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_the_streamed_start_signs_what_the_start_that_held_every_finding_signed(
        db_session: Session, keyring: KeyRing, variant: str) -> None:
    params, expected, make = VARIANTS[variant]
    make(db_session, keyring)
    db_session.flush()
    before = _started_by(db_session, keyring, old_start_run, params)
    after = _started_by(db_session, keyring, start_run, params)
    signed, plan, findings = after
    assert len(signed) >= 2 and signed[0].startswith(b"plant.audit-record.v1\x00")  # the plan, then the checkpoints
    assert signed == before[0]  # every statement signed, byte for byte
    assert after == before
    assert plan["count"] == len(findings) == expected
    if expected == 0:
        assert plan == FINDINGS_NONE
    else:
        assert plan["ids"] == [[findings[0][0], findings[-1][0]]]


def test_a_start_holds_a_page_of_its_findings_not_all_of_them(db_session: Session, keyring: KeyRing) -> None:
    """Python's own allocations while a run whose start writes 6,000 findings starts: the
    old start held the anti-join's rows and their findings, every finding as an ORM object,
    then again as a row, its resource and its bytes (22 to 24 MB here, linear in the
    findings); the start now holds a page of each (7.5 to 9 MB, the same at 2,000 and 12,000)."""
    rowless(db_session, 6_000, keyring)
    job = create_job(db_session, kind="audit.run", params={}, queue="audit")
    db_session.flush()
    db_session.expire_all()
    tracemalloc.start()
    try:
        run = start_run(db_session, job_id=job.id, params={}, keyring=keyring, embedder=EMBEDDER, chunk_entities=50_000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert run.plan_signed["findings"]["count"] == 6_000
    assert peak < 14_000_000, f"the start took {peak / 1e6:.1f} MB"


def test_the_plan_of_a_streamed_start_verifies_and_its_run_closes(db_session: Session, keyring: KeyRing) -> None:
    from models.audit_close import summarize_run
    from models.audit_record import plan_problem
    rowless(db_session, 1_500, keyring)
    job = create_job(db_session, kind="audit.run", params={}, queue="audit")
    run = start_run(db_session, job_id=job.id, params={}, keyring=keyring, embedder=EMBEDDER, chunk_entities=50_000)
    chunks = list(db_session.scalars(select(AuditChunk).where(AuditChunk.run_id == run.id)))
    assert plan_problem(db_session, run, chunks, keyring) is None
    summary = summarize_run(db_session, run_id=run.id, keyring=keyring, status="failed")  # no chunk audited
    assert summary["findings"] == 1_500 and "findings_left_out" not in summary
    assert summary["by_code"] == {"entity-row-missing": 1_500}
