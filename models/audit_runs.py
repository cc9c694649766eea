"""Audit runs: plan a run's chunks, once; :mod:`models.audit_chunks` audits them batch by
batch and :mod:`models.audit_close` merges the result and closes the run.

A run's scope is split per entity type into id ranges sized for one worker each
(:func:`start_run`); a retry gets the same run. Run-level digest findings
(``against_digest``) are written when the run is planned, only for entities in the run's
scope. An incremental run (``since: latest-digest``) is audited inline and recorded as one
finished chunk. :class:`AuditParams` is how every step reads the run's parameters, and
:func:`insert_findings` how each writes its findings (:func:`insert_start_findings` the
start's, a page at a time).
"""

from __future__ import annotations

import datetime as dt
import math
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import islice
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from models.audit import FindingRow, finding_from_chain, rowless_chain_pages
from models.audit_certificates import certificate_finding_pages
from models.audit_record import sign_plan
from models.audit_tables import AuditChunk, AuditFinding, AuditRun
from models.chain import EntityVersion
from models.constitution import constitution_version
from models.db_statements import uuid_in
from models.embeddings import Embedder
from models.entities import ENTITY_MODELS, EntityType
from models.errors import InvalidInput
from models.incremental_audit import audit_since_latest_digest
from models.key_seals import SEAL_INVALID_CODE, seal_problems
from models.ledger_compare import compare_heads, root_as_of
from models.ledger_digest import digest_problem
from models.ledger_trust import signed_after_seal
from models.repair import record_sha256, settle_repairs, verified_repairs
from models.signing import KeyRing

MAX_UUID = (1 << 128) - 1
# The findings of a run's start written by one statement (insertmanyvalues' own page).
START_FINDINGS_PAGE = 1_000


@dataclass(frozen=True)
class AuditParams:
    entity_type: str | None = None
    entity_ids: tuple[str, ...] | None = None
    signatures: str = "heads"
    against_digest: dict[str, Any] | None = None

    @classmethod
    def from_json(cls, params: dict[str, Any]) -> AuditParams:
        """The parameters as stored. No ids, absent or an empty list, means every entity of
        the scope's type: runs stored with ``[]`` before :func:`validate_params` refused it
        audited every one, and their records (plan, repairs listed in every export) say so."""
        params = params if isinstance(params, dict) else {}  # a run's row edited through SQL: its plan check says so
        scope = params.get("scope") or {}
        ids = scope.get("entity_ids")
        return cls(scope.get("entity_type"), tuple(ids) if ids else None,
                   params.get("verify_signatures") or "heads", params.get("against_digest"))

    def types(self) -> list[EntityType]:
        return [EntityType(self.entity_type)] if self.entity_type else list(EntityType)

    def ids_filter(self, model: Any, query: Any) -> Any:
        # One array parameter: IN would send one per id, and PostgreSQL takes at most 65,535.
        return query.where(uuid_in(model.id, [uuid.UUID(i) for i in self.entity_ids])) if self.entity_ids else query

    def scoped(self, session: Session, findings: list[FindingRow]) -> list[FindingRow]:
        """``findings`` about entities in scope, and run-level ones (no entity).

        A digest's leaves cover the whole registry; a scoped run must neither report nor
        count the entities it was not asked about. A deleted entity's type is not in the
        digest: it is read from its versions, and kept when unknown.
        """
        if self.entity_type is None and not self.entity_ids:
            return findings
        ids = {uuid.UUID(i) for i in self.entity_ids} if self.entity_ids else None
        untyped = [f.entity_id for f in findings if f.entity_id is not None and f.entity_type is None]
        types = dict(session.execute(select(EntityVersion.entity_id, EntityVersion.entity_type).where(
            uuid_in(EntityVersion.entity_id, untyped)).distinct()).all()) if untyped and self.entity_type else {}

        def in_scope(f: FindingRow) -> bool:
            if f.entity_id is None:
                return True
            if ids is not None and f.entity_id not in ids:
                return False
            kind = f.entity_type or types.get(f.entity_id)
            return self.entity_type is None or kind in (None, self.entity_type)

        return [f for f in findings if in_scope(f)]

    def coverage(self) -> dict[str, Any]:
        """A full (possibly scoped) run reads every row and every version in its scope."""
        return {
            "mode": "full",
            "scope": {"entity_type": self.entity_type, "entity_ids": len(self.entity_ids) if self.entity_ids else None},
            "rows": "every row in scope compared with its head version; a chain in scope whose row is gone reported",
            "versions": "every version of every row in scope re-hashed and re-linked",
            "signatures": "every version's" if self.signatures == "all" else "each head version's",
            "certifications": "each certified skill in scope put through the duplicate gate again, from the signed "
                              "texts, and its stored embedding compared with its text's; every issued certificate id "
                              "(of the skills in scope) matched with the certificates their chains record",
        }


def start_run(session: Session, *, job_id: uuid.UUID, params: dict[str, Any], keyring: KeyRing, embedder: Embedder,
              chunk_entities: int) -> AuditRun:
    """Create the run, its chunks and its digest findings once; a retry gets the same run."""
    existing = session.scalar(select(AuditRun).where(AuditRun.job_id == job_id))
    if existing is not None:
        return existing
    validate_params(params)
    scope = AuditParams.from_json(params)
    settle_repairs(session)  # a restore in flight commits first: the plan names the repairs the run lists
    run = AuditRun(job_id=job_id, params=params, chunks_published_attempt=0)  # no chunk published yet
    session.add(run)
    session.flush()
    insert_start_findings(session, run.id, [FindingRow(None, None, None, SEAL_INVALID_CODE, problem) for problem in seal_problems(session, keyring)])
    repairs = plan_repairs(session, run, keyring)
    if params.get("since") == "latest-digest":
        return _incremental(session, run, keyring, embedder, repairs)
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
        insert_start_findings(session, run.id, scope.scoped(session, digest_findings(session, scope.against_digest, keyring)))
    for page in rowless_chain_pages(session):  # every row may be gone: a page at a time
        insert_start_findings(session, run.id, scope.scoped(session, page))
    if EntityType.SKILL in scope.types():
        ids = {uuid.UUID(i) for i in scope.entity_ids} if scope.entity_ids else None
        for page in certificate_finding_pages(session, skill_ids=ids):  # a finding per certificate, at most
            insert_start_findings(session, run.id, scope.scoped(session, page))
    sign_plan(session, run, chunks, keyring, repairs=repairs)
    session.flush()
    return run


def plan_repairs(session: Session, run: AuditRun, keyring: KeyRing) -> list[dict[str, str]]:
    """The repair records a new run's report lists, as its plan names them (id and
    :func:`models.repair.record_sha256`): :func:`scope_repairs`."""
    session.refresh(run, ["created_at"])
    return [{"id": record["id"], "sha256": record_sha256(record)} for record in scope_repairs(session, run, keyring)]


def scope_repairs(session: Session, run: AuditRun, keyring: KeyRing) -> list[dict[str, Any]]:
    """The repair records of entities in ``run``'s scope, made before it started, whose own
    signature verifies (:func:`models.repair.verified_repairs`)."""
    scope = AuditParams.from_json(run.params or {})
    ids = [uuid.UUID(i) for i in scope.entity_ids] if scope.entity_ids else None
    return verified_repairs(session, entity_type=scope.entity_type, entity_ids=ids, before=run.created_at, keyring=keyring)


def _incremental(session: Session, run: AuditRun, keyring: KeyRing, embedder: Embedder,
                 repairs: list[dict[str, str]]) -> AuditRun:
    """Run the incremental audit inline and record it as one finished chunk. Its findings are
    written as it finds them (a batch of entities' at a time), in the order found."""
    result = audit_since_latest_digest(session, keyring=keyring, embedder=embedder,
                                       sink=lambda found: insert_start_findings(session, run.id, found))
    chunk = AuditChunk(
        run_id=run.id, chunk_no=0, entity_type="incremental", low_id=uuid.UUID(int=0), high_id=uuid.UUID(int=MAX_UUID),
        done=True, counters={"entities": result.entities, "versions_verified": result.versions_verified,
                             "since_digest": result.digest_id, "coverage": result.coverage(),
                             "constitution_versions": [constitution_version()] if result.entities else []},
    )
    session.add(chunk)
    run.entities_total = result.entities
    run.chunks_total = run.chunks_done = 1
    sign_plan(session, run, [chunk], keyring, repairs=repairs)
    session.flush()
    return run


def id_ranges(parts: int) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """``parts`` contiguous inclusive ranges covering the whole UUID space."""
    step = (MAX_UUID + 1) // parts
    bounds = [i * step for i in range(parts)] + [MAX_UUID + 1]
    return [(uuid.UUID(int=bounds[i]), uuid.UUID(int=bounds[i + 1] - 1)) for i in range(parts)]


def digest_findings(session: Session, digest: dict[str, Any], keyring: KeyRing) -> list[FindingRow]:
    """Compare the registry with a digest kept outside Plant (leaves optional)."""
    problem = digest_problem(digest, keyring)
    if problem is not None:
        return [FindingRow(None, None, None, "digest-invalid", f"against_digest cannot be trusted: {problem}")]
    as_of = dt.datetime.fromisoformat(digest["as_of"].replace("Z", "+00:00"))
    after_seal = signed_after_seal(keyring, digest["kid"], as_of)
    if after_seal is not None:
        return [FindingRow(None, None, None, "digest-invalid", f"against_digest cannot be trusted: {after_seal}")]
    if "leaves" in digest:
        leaves = [(uuid.UUID(leaf["entity_id"]), leaf.get("version"), bytes.fromhex(leaf["head"])) for leaf in digest["leaves"]]
        return [finding_from_chain(h.entity_type, h.entity_id, h.finding) for h in compare_heads(session, leaves)]
    count, root = root_as_of(session, as_of)
    if root.hex() == digest["heads_root"] and count == digest["entity_count"]:
        return []
    return [FindingRow(None, None, None, "ledger-root-mismatch",
                       f"heads as of {digest['as_of']} hash to {root.hex()}, the digest says {digest['heads_root']}")]


def insert_findings(session: Session, run_id: uuid.UUID, findings: list[FindingRow], *, chunk_id: int | None = None,
            step: int | None = None) -> list[AuditFinding]:
    """Write ``findings`` (by a chunk's checkpoint ``step``, or by the run's close) and
    return them as stored, for the signature that covers them: a batch's, a few. The run's
    start writes its own with :func:`insert_start_findings`."""
    if not findings:
        return []
    return list(session.scalars(insert(AuditFinding).returning(AuditFinding, sort_by_parameter_order=True),
                                [_finding_values(run_id, f, chunk_id, step) for f in findings]))


def insert_start_findings(session: Session, run_id: uuid.UUID, findings: Iterable[FindingRow]) -> int:
    """Write findings of the run's start, :data:`START_FINDINGS_PAGE` at a time, and return
    how many: none is kept, as stored or otherwise. A start can write one per entity (a
    digest every entity fails, chains whose rows are gone); :func:`models.audit_record.sign_plan`
    reads them back a page at a time. Their ids are drawn in the order given, as
    :func:`insert_findings` draws them (the plan signs them in id order)."""
    written, rows = 0, iter(findings)
    while page := list(islice(rows, START_FINDINGS_PAGE)):
        session.execute(insert(AuditFinding).returning(AuditFinding.id, sort_by_parameter_order=True),
                        [_finding_values(run_id, f, None, None) for f in page]).close()
        written += len(page)
    return written


def _finding_values(run_id: uuid.UUID, f: FindingRow, chunk_id: int | None, step: int | None) -> dict[str, Any]:
    return {"run_id": run_id, "entity_type": f.entity_type, "entity_id": f.entity_id, "version": f.version,
            "code": f.code, "severity": f.severity, "rule_id": f.rule_id, "detail": f.detail, "chunk_id": chunk_id,
            "step": step}


def validate_params(params: dict[str, Any]) -> None:
    """What :func:`start_run` accepts, whoever wrote the job's row (the API checks the same
    and more before it accepts a job; ``jobs.params`` takes any UPDATE): an incremental run
    reads neither a scope nor a digest, so accepting them would sign a report of a run that
    never looked; and a scope listing no entity ids (``[]``) asks for no audit at all, which
    must not become one of every entity."""
    if not isinstance(params, dict):
        raise InvalidInput("audit parameters must be an object", field="params")
    digest = params.get("against_digest")
    if digest is not None and not isinstance(digest, dict):
        raise InvalidInput("against_digest must be an object", field="against_digest")
    since = params.get("since")
    if since is not None and (since != "latest-digest" or digest is not None or params.get("scope")):
        raise InvalidInput("'since' must be 'latest-digest', and it cannot be combined with 'scope' or 'against_digest'",
                           field="since")
    scope = params.get("scope")
    if isinstance(scope, dict) and scope.get("entity_ids") is not None and not scope["entity_ids"]:
        raise InvalidInput("scope.entity_ids names no entity: list at least one, or leave it out to audit every entity "
                           "of the scope's type", field="scope.entity_ids")
