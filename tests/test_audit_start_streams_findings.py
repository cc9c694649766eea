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

An incremental run's audit held every finding it made until the run wrote them all; it now
hands each to the run as found. The old one is kept here too (:func:`old_audit_since_latest_digest`,
verbatim but for its names and docstrings), and the old start runs it;
``tests/test_incremental_audit_streams_findings.py`` compares the two over many more paths. The
certificates' cross-check fetched both its sides at once (every certified skill's versions'
contents) and made every finding before the first was written; it now reads them through a
held cursor and hands its findings out a page at a time (:func:`old_certificate_findings` is
the old one).
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

from models.audit import (
    BatchResult, FindingRow, gate_findings, load_entities, none_trusted_among, passed_over_findings, rowless_chains,
    rule_findings, seat_facts, suspects_rechecked, versions_by_entity,
)
from models.audit_certificates import (
    _BOTH_SIDES, _BOTH_SIDES_OF, NOT_RECORDED, NOT_SIGNED, _unrecorded, recorded_certificate_id,
)
from models.audit_findings import all_findings
from models.audit_findings_chain import FINDINGS_NONE, findings_chained
from models.audit_record import PLAN, _plan, _signed, record_step, sign_checkpoint
from models.audit_runs import (
    AuditParams, digest_findings, id_ranges, plan_repairs, start_run, validate_params,
)
from models.audit_tables import AuditChunk, AuditFinding, AuditRun, LedgerDigestHead
from models.constitution import append_only_enforced
from models.entities import ENTITY_MODELS, EntityType, governed_content
from models.errors import NotFound
from models.incremental_audit import BATCH, IncrementalResult, _after_leaf, _chain_findings, _guards_lifted
from models.incremental_changes import (
    Changed, changed_since, grown_behind_rows, row_counts, seat_partners, version_totals,
)
from models.job_lifecycle import create_job
from models.key_seals import SEAL_INVALID_CODE, seal_problems
from models.ledger_compare import compare_heads
from models.ledger_store import LATEST_DIGESTS_READ, newest_trusted_digest, store_digest
from models.seal_check import seal_findings
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


# The incremental audit as it was (commit 7f9ba6a), every finding held until the run wrote them
# all, and the chains' counts kept per entity; its coverage is the module's own, read off these.

@dataclass
class OldIncrementalResult:
    digest_id: int
    digest_as_of: str
    findings: list[FindingRow] = field(default_factory=list)
    entities: int = 0
    versions_verified: int = 0
    rehashed_by_entity: dict[uuid.UUID, int] = field(default_factory=dict)
    chains: dict[uuid.UUID, tuple[int, int]] = field(default_factory=dict)
    digest_trusted: bool = True
    digest_rows_kept: bool = True
    version_count_balanced: bool = True
    digests_passed_over: int = 0

    @property
    def versions_rehashed(self) -> int:
        return sum(self.rehashed_by_entity.values())

    coverage = IncrementalResult.coverage


def old_audit_since_latest_digest(session: Session, *, keyring: KeyRing, embedder: Any) -> OldIncrementalResult:
    digest, passed = newest_trusted_digest(session, keyring)
    if digest is None and not passed:
        raise NotFound("no ledger digest is stored yet; an incremental audit needs one")
    result = _old_since(digest or passed[0][0], passed)
    if digest is None:
        if len(passed) == LATEST_DIGESTS_READ:
            result.findings.append(none_trusted_among(LATEST_DIGESTS_READ))
        result.digest_trusted = False
        return result
    if not append_only_enforced(session):
        result.findings.append(_guards_lifted(digest))
        result.digest_trusted = False
        return result
    accounted = 0
    deleted: set[tuple[str, uuid.UUID]] = set()
    plan: dict[EntityType, Changed] = {}
    for entity_type in EntityType:
        plan[entity_type], with_leaf, deleted_ids, live_again = changed_since(session, entity_type, digest)
        accounted += with_leaf
        deleted |= {(entity_type.value, entity_id) for entity_id in deleted_ids}
        result.findings += [FindingRow(entity_type.value, entity_id, version, "entity-undeleted",
                                       "live, though the digest keeps its deletion (a tombstone): Plant brings no deleted entity back")
                            for entity_id, version in live_again]
    for entity_type, ids in seat_partners(session, plan).items():
        plan[entity_type] += changed_since(session, entity_type, digest, ids)[0]
    for entity_type, changed in plan.items():
        _old_audit_in_batches(session, entity_type, changed, keyring, embedder, result)
    ledger_versions, leaf_versions = version_totals(session, digest)
    if ledger_versions != leaf_versions + sum(length - leaf for length, leaf in result.chains.values()):
        result.version_count_balanced = False
        for entity_type, changed in grown_behind_rows(session, digest, set(result.chains)).items():
            _old_audit_in_batches(session, entity_type, changed, keyring, embedder, result)
    leaves, tombstones = row_counts(session, digest)
    if not result.version_count_balanced or leaves != accounted:
        rowless = rowless_chains(session)
        result.findings += rowless
        deleted |= {(f.entity_type, f.entity_id) for f in rowless}
    if leaves != accounted:
        result.findings += _old_vanished(session, digest.id, deleted)
    if leaves != digest.entity_count or tombstones != digest.document.get("tombstone_count", 0):
        result.findings.append(FindingRow(None, None, None, "digest-invalid", (
            f"stored ledger digest {digest.id} ({digest.as_of.isoformat()}): {leaves} leaf and {tombstones} tombstone rows "
            f"are left of its {digest.entity_count} and {digest.document.get('tombstone_count', 0)} while the audit read "
            "them (pruned or deleted meanwhile): what it found stands, but what it did not find is not vouched for; "
            "run a full audit")))
        result.digest_rows_kept = False
    return result


def _old_since(digest: Any, passed: list[tuple[Any, str]]) -> OldIncrementalResult:
    result = OldIncrementalResult(digest.id, digest.as_of.isoformat(), digests_passed_over=len(passed))
    result.findings += passed_over_findings(digest, passed)
    return result


def _old_audit_in_batches(session: Session, entity_type: EntityType, changed: Changed, keyring: KeyRing, embedder: Any,
                          result: OldIncrementalResult) -> None:
    for start in range(0, len(changed), BATCH):
        _old_audit_changed(session, entity_type, changed[start : start + BATCH], keyring, embedder, result)


def _old_audit_changed(session: Session, entity_type: EntityType, changed: Changed, keyring: KeyRing, embedder: Any,
                       result: OldIncrementalResult) -> None:
    base = {entity_id: (version, link) for entity_id, version, link in changed}
    rolled: dict[uuid.UUID, tuple[uuid.UUID, int | None, bytes]] = {}

    def check(entities: list) -> BatchResult:
        return _old_check_changed(session, entities, base, keyring, embedder, rolled, result)

    entities = load_entities(session, entity_type, list(base))
    batch = suspects_rechecked(session, check(entities), entities, check) if entities else BatchResult()
    result.findings += batch.findings
    result.entities += batch.entities
    result.versions_verified += batch.versions_verified
    result.findings += [FindingRow(h.entity_type or entity_type.value, h.entity_id, h.finding.version, h.finding.code,
                                   h.finding.detail) for h in compare_heads(session, list(rolled.values()))]


def _old_check_changed(session: Session, entities: list, base: dict, keyring: KeyRing, embedder: Any, rolled: dict,
                       result: OldIncrementalResult) -> BatchResult:
    batch = BatchResult()
    versions = versions_by_entity(session, [entity.id for entity in entities])
    seats = seat_facts(session, entities, keyring)
    sealed = seal_findings(session, ((entity, versions.get(entity.id, [])) for entity in entities), keyring)
    kind = entities[0].entity_type_value.value if entities else ""
    for entity in entities:
        leaf = base[entity.id]
        rows = versions.get(entity.id, [])
        result.chains[entity.id] = (sum(1 for row in rows if row.entity_type == kind), leaf[0])
        batch.entities += 1
        split = _after_leaf(rows, leaf)
        rolled.pop(entity.id, None)
        if split is None:
            rolled[entity.id] = (entity.id, leaf[0], leaf[1])
            split = 0
        content = governed_content(entity)
        findings = _chain_findings(entity, rows, split, keyring, content) + ([sealed[entity.id]] if entity.id in sealed else [])
        batch.findings += [FindingRow(kind, entity.id, f.version, f.code, f.detail) for f in findings]
        batch.findings += rule_findings(entity, content, rows, True, seats)
        batch.versions_verified += len(rows) - split
        result.rehashed_by_entity[entity.id] = split
    batch.findings += gate_findings(session, entities, batch.findings, keyring=keyring, embedder=embedder)
    return batch


def _old_vanished(session: Session, digest_id: int, examined: set[tuple[str, uuid.UUID]]) -> list[FindingRow]:
    findings = []
    for entity_type, model in ENTITY_MODELS.items():
        alive = select(model.id).where(model.id == LedgerDigestHead.entity_id, model.deleted_at.is_(None))
        gone = session.execute(
            select(LedgerDigestHead.entity_id, LedgerDigestHead.version).where(
                LedgerDigestHead.digest_id == digest_id, LedgerDigestHead.entity_type == entity_type.value,
                ~alive.exists())
        ).all()
        findings += [FindingRow(entity_type.value, entity_id, version, "entity-deleted", "in the digest, gone from the registry")
                     for entity_id, version in gone if (entity_type.value, entity_id) not in examined]
    return findings


def old_incremental(session: Session, run: AuditRun, keyring: KeyRing, embedder: Any,
                    repairs: list[dict[str, str]]) -> AuditRun:
    from models.audit_runs import MAX_UUID
    from models.constitution import constitution_version
    result = old_audit_since_latest_digest(session, keyring=keyring, embedder=embedder)
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


def old_certificate_findings(session: Session, *, skill_ids: Any = None) -> list[FindingRow]:
    """:func:`models.audit_certificates.certificate_findings` as it was (commit 7f9ba6a): every
    row of both sides fetched at once, every finding made before the first is written."""
    both_sides = session.execute(_BOTH_SIDES) if skill_ids is None else session.execute(
        _BOTH_SIDES_OF, {"ids": sorted(skill_ids)})
    issued: dict[str, uuid.UUID] = {}
    signed: dict[tuple[str, uuid.UUID], int] = {}
    for certificate_id, skill_id, version, content in both_sides:
        if version is None:
            issued[certificate_id] = skill_id
        elif (recorded := recorded_certificate_id(bytes(content))) is not None:
            signed[(recorded, skill_id)] = min(version, signed.get((recorded, skill_id), version))
    findings = [FindingRow(None, None, None, NOT_SIGNED,
                           f"issued_certificates holds {certificate_id} for skill {skill_id}, and no version of that "
                           "skill's chain records it: a row written outside Plant, for a certificate never signed")
                for certificate_id, skill_id in sorted(issued.items()) if (certificate_id, skill_id) not in signed]
    for (certificate_id, skill_id), version in sorted(signed.items(), key=lambda item: (str(item[0][1]), item[1])):
        if issued.get(certificate_id) != skill_id:
            findings.append(FindingRow("skill", skill_id, version, NOT_RECORDED, _unrecorded(certificate_id,
                                                                                               issued.get(certificate_id))))
    return findings


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
        old_insert_findings(session, run.id, scope.scoped(session, old_certificate_findings(session, skill_ids=ids)))
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


def unsigned_certificates(session: Session, count: int) -> None:
    """``count`` rows of ``issued_certificates`` INSERTed through SQL for skills no chain
    records them for: one ``certificate-not-signed`` finding each at a full run's start."""
    session.execute(text(
        "INSERT INTO issued_certificates (certificate_id, industry_code, number, skill_id)"
        " SELECT 'SKILL-ZZ-' || n, 'ZZ', n, gen_random_uuid() FROM generate_series(1, :count) AS n"), {"count": count})


VARIANTS = {
    "none": ({}, 0, lambda s, k: None),
    "digest_invalid": ({"against_digest": {}}, 1, lambda s, k: None),
    "rowless_pages": ({}, 2_345, lambda s, k: rowless(s, 2_345, k)),
    "rowless_page_exactly": ({}, 1_000, lambda s, k: rowless(s, 1_000, k)),
    "rowless_scoped": ({"scope": {"entity_type": "skill"}}, 300, lambda s, k: rowless(s, 1_500, k)),
    "digest_invalid_and_rowless": ({"against_digest": {"type": "nope"}}, 1_201, lambda s, k: rowless(s, 1_200, k)),
    "certificates_pages": ({}, 2_222, lambda s, k: unsigned_certificates(s, 2_222)),
    "certificates_and_rowless_scoped": ({"scope": {"entity_type": "skill"}}, 1_300,
                                        lambda s, k: (unsigned_certificates(s, 1_000), rowless(s, 1_500, k))),
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
