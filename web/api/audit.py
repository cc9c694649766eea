"""Audit and ledger endpoints: start audits, read runs and findings, export signed
reports, check one entity for tampering, and get a signed ledger digest."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterator
from typing import Any, Literal

from flask import Response
from flask_openapi3 import APIBlueprint, Tag

from web.auth import BEARER
from web.content_negotiation import not_acceptable_unless
from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator
from sqlalchemy import select

from models.audit import check_entity
from models.audit_findings import finding_resource, run_resource
from models.audit_tables import AuditRun
from models.canonical import MAX_SAFE_INTEGER
from models.entities import EntityType
from models.ledger import digest_now
from models.ledger_digest import MAX_DIGEST_LEAVES
from models.logging_setup import current_log_context
from models.pagination import invalid_page_token, keyset_page, page_token, page_token_text
from models.report_reads import get_run
from models.reports import CheckedCsv, checked_csv, export_report, findings_page
from web.jobs_http import accept_job, submits_a_job
from web.registry_schemas import PageQuery
from web.report_html import HTML_RESPONSE, report_page
from web.schemas import API_PROBLEMS, JobOut, QueryModel, members_refused, problems
from web.services import Services, db_session, digest_slot, services, statement_at_a_time, stream_session

log = logging.getLogger(__name__)
audit_api = APIBlueprint("audit", __name__, url_prefix="/api/v1", abp_security=BEARER, abp_responses=API_PROBLEMS, abp_tags=[Tag(name="audit")])


# With each list at its maximum, a request fits PLANT_MAX_REQUEST_BYTES' default (1 MiB): as
# JSON a scope id takes 40 bytes, a leaf at most 160 (tests/test_http_edge_cases.py
# ::test_the_largest_requests_the_schemas_allow_fit_the_default_body_limit). Larger maxima
# were refused as 413 long before they were reached. (MAX_DIGEST_LEAVES: models.ledger_digest,
# which the CLI reads too.)
MAX_SCOPE_IDS = 5_000


class AuditScope(BaseModel):
    model_config = ConfigDict(extra="forbid")
    entity_type: EntityType | None = None
    entity_ids: list[uuid.UUID] | None = Field(
        default=None, min_length=1, max_length=MAX_SCOPE_IDS,
        description="only these entities; omit it (not []) to audit every entity of the scope's type")


HEX_HASH = r"^[0-9a-f]{64}$"


class DigestLeaf(BaseModel):
    model_config = ConfigDict(extra="forbid")
    entity_id: uuid.UUID
    head: str = Field(pattern=HEX_HASH)
    version: StrictInt | None = Field(default=None, ge=1, le=MAX_SAFE_INTEGER)


class LedgerDigestIn(BaseModel):
    """A digest from ``GET /ledger/digest``, kept outside Plant and handed back."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["plant.ledger-digest.v1"]
    as_of: str = Field(max_length=64)
    entity_count: StrictInt = Field(ge=0, le=MAX_SAFE_INTEGER)  # the run's signed plan holds it as canonical JSON
    heads_root: str = Field(pattern=HEX_HASH)
    kid: str = Field(max_length=128)
    signature: str = Field(max_length=1024)
    leaves: list[DigestLeaf] | None = Field(
        default=None, max_length=MAX_DIGEST_LEAVES,
        description="a larger registry's digest is handed back without its leaves (the signature does not cover them): "
                    "the audit then reports any change to the heads at its as_of as ledger-root-mismatch")


class AuditRunIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    scope: AuditScope = Field(default_factory=AuditScope)
    verify_signatures: Literal["heads", "all"] = "heads"
    against_digest: LedgerDigestIn | None = None
    since: Literal["latest-digest"] | None = Field(
        default=None, description="incremental: verify only what changed since the latest stored digest; "
                                  "it audits the whole registry against that digest, so it takes no scope or against_digest")

    @model_validator(mode="after")
    def _incremental_takes_no_scope_or_digest(self) -> AuditRunIn:
        # An incremental run reads neither: accepting them would report a clean run that never looked.
        if self.since is not None and (self.against_digest is not None or self.scope != AuditScope()):
            combined = ["scope"] * (self.scope != AuditScope()) + ["against_digest"] * (self.against_digest is not None)
            raise members_refused("'since' audits the whole registry against the latest stored digest: "
                                  "it cannot be combined with 'scope' or 'against_digest'", "since", *combined)
        return self


class AuditSummary(BaseModel):
    """A finished run's summary, as its close stored it (``models.audit_close``). Runs closed by
    earlier releases lack the members added since; the row is served as stored, unchecked."""

    model_config = ConfigDict(extra="allow")
    run_id: str | None = None
    total_entities: int | None = Field(default=None, description="always compliant + non_compliant")
    compliant: int | None = None
    non_compliant: int | None = None
    entities_with_findings: int | None = Field(
        default=None, description="audited entities with any finding, warnings included (total_entities less these "
                                  "are clean)")
    versions_verified: int | None = None
    findings: int | None = Field(default=None, description="findings counted (not those left out)")
    by_code: dict[str, int] | None = None
    by_rule: dict[str, int] | None = None
    constitution_versions: list[str] | None = Field(
        default=None, description="the rule catalogue versions its chunks checked against; `unrecorded` for a chunk "
                                  "checkpointed by an earlier release")
    run_level_findings: list[str] | None = None
    duration_seconds: float | None = None
    signatures: str | None = Field(default=None, description="which signatures were verified: heads, all, "
                                                             "all-after-digest, none, or unknown")
    coverage: dict[str, Any] | None = Field(default=None, description="what was read and what was taken on trust")
    database_role: dict[str, Any] | None = Field(default=None, description="the login role the close ran under")
    findings_left_out: dict[str, Any] | None = Field(
        default=None, description="`{count, ids}` of findings no signed plan or checkpoint names, counted nowhere")


class AuditRunOut(BaseModel):
    """An audit run's row as stored (no proof: the signed export is, ``GET /audit/export``)."""

    id: uuid.UUID
    job_id: uuid.UUID
    status: str = Field(description="running, then its job's end status: succeeded, failed or cancelled")
    params: dict[str, Any]
    entities_total: int
    chunks_total: int
    chunks_done: int
    summary: AuditSummary | None = Field(description="null until the run is closed")
    created_at: str
    finished_at: str | None


class AuditRunList(BaseModel):
    items: list[AuditRunOut]
    next_page_token: str | None


class FindingFields(BaseModel):
    entity_type: str | None
    entity_id: uuid.UUID | None
    version: int | None
    code: str
    severity: str = Field(description="critical, error or warning")
    rule_id: str | None
    detail: str


class FindingOut(FindingFields):
    finding_id: int


class FindingList(BaseModel):
    items: list[FindingOut]
    next_page_token: str | None


class TamperCheckOut(BaseModel):
    entity_id: uuid.UUID
    entity_type: str
    tampered: bool = Field(description="whether any finding is critical")
    versions: int = Field(description="chain versions verified")
    findings: list[FindingFields]


class DigestLeafOut(BaseModel):
    entity_id: uuid.UUID
    head: str
    version: int | None = Field(default=None, description="the head's version; absent when it names none (below 1): "
                                                          "not covered by the signature")


class LedgerDigestOut(BaseModel):
    """A signed digest (``models.ledger_digest``): keep it outside Plant and hand it back to
    ``POST /audit/run`` as ``against_digest``."""

    type: Literal["plant.ledger-digest.v1"]
    as_of: str
    entity_count: int
    heads_root: str = Field(description="RFC 6962 Merkle root of the heads, hex")
    kid: str
    signature: str = Field(description="base64url, over the RFC 8785 bytes of `{type, as_of, entity_count, heads_root}`")
    leaves: list[DigestLeafOut] | None = Field(default=None, description="with `leaves=true` only")


class SignedReport(BaseModel):
    """``format=json``: the run's report and a detached JWS over its RFC 8785 bytes, itself RFC 8785
    JSON; ``format=csv``: every finding, one row each, with the column ``counted``."""

    model_config = ConfigDict(openapi_extra={"content": {"text/csv": {"schema": {"type": "string"}}}})
    report: dict[str, Any] = Field(description="`type`, `run`, `findings` and `repairs`")
    signature: str = Field(description="a detached JWS (`typ: plant-report+jws`)")


class RunPath(BaseModel):
    run_id: uuid.UUID


class EntityIdPath(BaseModel):
    entity_id: uuid.UUID


class FindingsQuery(QueryModel):
    page_size: int = Field(default=100, ge=1, le=1000)
    page_token: str | None = Field(default=None, max_length=64)
    code: str | None = Field(default=None, max_length=64)


EXPORT_TYPES = {"json": "application/json", "csv": "text/csv"}  # each format's media type


class ExportQuery(QueryModel):
    run_id: uuid.UUID
    format: Literal["json", "csv"] = "json"


class DigestQuery(QueryModel):
    leaves: bool = Field(default=False, description="include every (entity_id, head, version) leaf")


@audit_api.post("/audit/run", responses={202: JobOut, **problems(409, 422)})
@submits_a_job
def start_audit(body: AuditRunIn) -> Response:
    """Start a compliance audit (job ``audit.run`` on the audit queue)."""
    params = body.model_dump(mode="json", exclude_none=True)
    return accept_job("audit.run", params)


@audit_api.get("/audit/runs", responses={200: AuditRunList, **problems(422)})
def list_runs(query: PageQuery) -> dict[str, Any]:
    """Audit runs, newest first."""
    page = keyset_page(db_session(), select(AuditRun), AuditRun, page_size=query.page_size, page_token=query.page_token)
    return {"items": [run_resource(r) for r in page.items], "next_page_token": page.next_page_token}


@audit_api.get("/audit/runs/<run_id>", responses={200: AuditRunOut, **problems(404)})
def show_run(path: RunPath) -> dict[str, Any]:
    """One audit run with its summary once finished."""
    return run_resource(get_run(db_session(), path.run_id))


@audit_api.get("/audit/runs/<run_id>/findings", responses={200: FindingList, **problems(404), **problems(422)})
def list_findings(path: RunPath, query: FindingsQuery) -> dict[str, Any]:
    """A run's findings in order, paged."""
    session = db_session()
    after = _decode_after(query.page_token) if query.page_token else None
    rows = findings_page(session, get_run(session, path.run_id), after=after, code=query.code, limit=query.page_size + 1)
    token = _encode_after(rows[query.page_size - 1].id) if len(rows) > query.page_size else None
    return {"items": [finding_resource(f) for f in rows[: query.page_size]], "next_page_token": token}


@audit_api.get("/audit/runs/<run_id>/report.html", responses={200: HTML_RESPONSE, **problems(404), **problems(409)})
@statement_at_a_time  # as the export: see there
def report_html(path: RunPath) -> Response:
    """The run's report for auditors: one self-contained HTML page (summary, charts, entities, signature)."""
    return report_page(db_session(), run_id=path.run_id, keyring=services().keyring)


def _encode_after(finding_id: int) -> str:
    return page_token(f"f:{finding_id}")


# What _encode_after writes: a finding id (a bigint) in ASCII digits. int() alone would
# also take "٣", " 5", "1_0" and ids past the bigint range (a database error, 500).
_AFTER_TOKEN = re.compile(r"f:(0|[1-9][0-9]{0,17})", re.ASCII)


def _decode_after(token: str) -> int:
    matched = _AFTER_TOKEN.fullmatch(page_token_text(token))
    if matched is None:
        raise invalid_page_token()
    return int(matched.group(1))


@audit_api.get("/audit/tampering/<entity_id>", responses={200: TamperCheckOut, **problems(404)})
def tampering(path: EntityIdPath) -> dict[str, Any]:
    """Check one entity now: chain, signatures, row, rules, and the newest stored digest Plant signed whose rows
    verify (each newer one is reported digest-invalid)."""
    svc = services()
    return check_entity(db_session(), entity_id=path.entity_id, keyring=svc.keyring, embedder=svc.embedder).as_json()


@audit_api.get("/audit/export", responses={200: SignedReport, **problems(404), **problems(409), **problems(422)})
@statement_at_a_time
def export(query: ExportQuery) -> Response:
    """The run's report: signed canonical JSON (``{"report", "signature"}``) or CSV findings."""
    # Read in autocommit: a run's report is built, hashed and signed in Python, seconds per
    # 100,000 findings, and a transaction left open meanwhile idled past
    # PLANT_DB_IDLE_IN_TRANSACTION_TIMEOUT_MS. Each read is consistent alone (a finished run's
    # record is frozen; a running run's report is read in the order models.report_reads.read_report
    # gives: its findings, then its checkpoints), and the one write, the record of a finished run's signature, is one INSERT.
    if (refused := not_acceptable_unless([EXPORT_TYPES[query.format]])) is not None:
        return refused  # the operation answers JSON or CSV, and `format` picked the one Accept refuses
    session = db_session()
    if query.format == "csv":
        # Checked before the first byte (a refusal is a 409 problem, not a 200 cut short); a
        # finished run's is then sent as it is written, page by page, read on a connection of
        # the stream's own: the request's goes back to the pool as the view returns.
        csv_export = checked_csv(session, run_id=query.run_id, keyring=services().keyring)
        body, mimetype = _streamed(csv_export, services(), dict(current_log_context())), EXPORT_TYPES["csv"]
    else:
        body, mimetype = export_report(session, run_id=query.run_id, keyring=services().keyring), EXPORT_TYPES["json"]
        session.commit()  # the record of its signature
    response = Response(body, mimetype=mimetype)
    response.headers["Content-Disposition"] = f'attachment; filename="audit-{query.run_id}.{query.format}"'
    return response


def _streamed(csv_export: CheckedCsv, svc: Services, log_ids: dict[str, str]) -> Iterator[str]:
    """The parts of a checked CSV export, read on a session of their own (no request context
    is needed, nor kept pushed while the stream waits), closed as the stream ends or is closed;
    a CSV written whole (a running run's) reads nothing, and takes no connection. The request
    was logged as a 200 when its view returned, and its ids unbound: a stream cut short (a
    page changed since the check, a database error) is logged here, under ``log_ids``."""
    try:
        if csv_export.whole is not None:
            yield from csv_export.whole
            return
        with stream_session(svc) as session:
            yield from csv_export.parts(session)
    except Exception as exc:
        why = getattr(exc, "code", None) or type(exc).__name__
        log.error("the CSV export of audit run %s was cut short after its 200 (%s): %s", csv_export.run_id, why, exc,
                  extra=log_ids)
        raise


@audit_api.get("/ledger/digest", tags=[Tag(name="ledger")], responses={200: LedgerDigestOut, **problems(409)})
def ledger_digest(query: DigestQuery) -> dict[str, Any]:
    """A signed digest of every entity's head, now: keep it outside Plant.

    Taken at a moment with no version write in flight (503 ``ledger-busy`` with Retry-After when
    there is none for 5 s), so that its ``as_of`` names exactly the heads it signs. Each API
    process takes ``PLANT_DIGESTS_AT_ONCE`` (1) at a time; one more is 503 ``digests-busy``."""
    with digest_slot():
        return digest_now(db_session(), keyring=services().keyring, with_leaves=query.leaves)
